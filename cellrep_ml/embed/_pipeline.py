"""The two warehouse steps, one call each: embed a crops partition, profile a dataset.

``embed_partition`` reads one ``crops/<dataset>/<cell_line>/`` folder (crop store and cell
index), embeds every crop, normalises per plate and replaces that partition's rows of
``cell_embeddings``. ``profile_dataset`` reads a dataset's cell embeddings back from the
warehouse and replaces its ``protein_features``. An orchestrator calls these and only
attaches the returned summaries as metadata.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch.nn as nn

from cellrep_ml.embed._aggregate import PROFILE_STATS, protein_profiles
from cellrep_ml.embed._infer import embed_cells
from cellrep_ml.embed._normalize import normalize
from cellrep_ml.embed._vectors import vectors_of

__all__ = [
    "EmbedSummary",
    "ProfileSummary",
    "embed_partition",
    "profile_dataset",
    "write_partition_embeddings",
]


@dataclass(frozen=True)
class EmbedSummary:
    """What :func:`embed_partition` wrote."""

    dataset: str
    cell_line: str
    n_cells: int
    dim: int
    table: str
    normalization: str
    seconds: float

    @property
    def cells_per_s(self) -> float:
        return self.n_cells / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class ProfileSummary:
    """What :func:`profile_dataset` wrote."""

    dataset: str
    n_proteins: int
    n_rows: int
    dim: int
    table: str
    normalization: str


def embed_partition(
    model: nn.Module,
    partition: str | Path,
    *,
    model_name: str,
    model_version: str,
    normalization: str = "plate",
    channels: Sequence[str] | None = None,
    layer: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    precision: str = "float32",
    warehouse: str | Path | None = None,
    progress: bool = False,
) -> EmbedSummary:
    """Embed one crops partition and replace its rows of ``cell_embeddings``.

    Parameters
    ----------
    model : nn.Module
        The trained model (see :func:`embed_cells`).
    partition : str or Path
        A ``crops/<dataset>/<cell_line>/`` folder: ``crops.zarr`` and ``cells.parquet``.
    model_name, model_version : str
        Recorded with every row; the partition key with dataset and cell line.
    normalization : {"plate", "mad", "none"}
        Per-plate normalisation applied before writing, recorded in the table.
    channels, layer, batch_size, device, precision, progress
        As in :func:`embed_cells`.
    warehouse : str or Path, optional
        The warehouse file; default ``warehouse_path()``.

    Returns
    -------
    EmbedSummary

    Raises
    ------
    InputError
        If the partition folder is incomplete or inconsistent.
    """
    from cellrep_ml.train.data import open_partition

    part, cells = open_partition(partition)
    t0 = time.perf_counter()
    emb = embed_cells(model, part.store_path, batch_size=batch_size, device=device, layer=layer,
                      channels=channels, precision=precision, progress=progress)
    return write_partition_embeddings(
        cells, emb, model_name=model_name, model_version=model_version,
        normalization=normalization, seconds=time.perf_counter() - t0, warehouse=warehouse)


def write_partition_embeddings(
    cells: pl.DataFrame,
    emb: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    normalization: str = "plate",
    seconds: float = 0.0,
    warehouse: str | Path | None = None,
) -> EmbedSummary:
    """Normalise one partition's raw features per plate and replace its warehouse rows.

    The second half of :func:`embed_partition`, for features that do not come from a
    torch model (e.g. :func:`classic_embeddings`). ``cells`` is the partition's cell
    index, row ``i`` describing ``emb[i]``; ``seconds`` is what computing ``emb`` took.
    """
    from cellrep_ml import warehouse as wh

    if emb.shape[0] != cells.height:
        raise ValueError(f"{emb.shape[0]} embeddings for {cells.height} cells")
    emb = normalize(emb, cells, normalization)
    frame = wh.cell_embedding_frame(cells, emb, model_name=model_name,
                                    model_version=model_version, normalization=normalization)
    wh.write_cell_embeddings(frame, path=warehouse)
    keys = cells.select("dataset", "cell_line").unique()
    return EmbedSummary(
        dataset=", ".join(keys["dataset"].unique().sort().to_list()),
        cell_line=", ".join(keys["cell_line"].unique().sort().to_list()),
        n_cells=cells.height, dim=int(emb.shape[1]),
        table=wh.table_name("cell_embeddings", emb.shape[1]),
        normalization=normalization, seconds=seconds,
    )


def profile_dataset(
    *,
    model_name: str,
    model_version: str,
    dataset: str,
    normalization: str = "plate",
    stats: Sequence[str] = PROFILE_STATS,
    split: str | None = "test",
    warehouse: str | Path | None = None,
) -> ProfileSummary:
    """Aggregate a dataset's cell embeddings (every cell line) into ``protein_features``.

    Parameters
    ----------
    model_name, model_version, dataset : str
        Which cell embeddings to read; the protein-features partition replaced.
    normalization : {"plate", "mad", "none"}
        Which of the stored normalisations to aggregate.
    stats : sequence of {"mean", "median"}
    split : str or None
        Cells aggregated (default the held-out ``test`` cells).
    warehouse : str or Path, optional
        The warehouse file; default ``warehouse_path()``.

    Returns
    -------
    ProfileSummary

    Raises
    ------
    LookupError
        If the warehouse holds no such cell embeddings.
    """
    from cellrep_ml import warehouse as wh

    cells = wh.read_features("cell_embeddings", model_name=model_name,
                             model_version=model_version, dataset=dataset, path=warehouse)
    cells = cells.filter(pl.col("normalization") == normalization)
    if cells.height == 0:
        raise LookupError(f"no cell embeddings of {model_name!r} version {model_version!r} "
                          f"for dataset {dataset!r} with normalization {normalization!r}")
    emb = vectors_of(cells, "embedding")
    profiles = protein_profiles(cells.drop("embedding"), emb, split=split, stats=stats,
                                normalization=normalization)
    frame = wh.protein_feature_frame(profiles, model_name=model_name, model_version=model_version)
    n = wh.write_protein_features(frame, path=warehouse)
    return ProfileSummary(dataset=dataset, n_proteins=profiles["protein"].n_unique(), n_rows=n,
                          dim=int(emb.shape[1]),
                          table=wh.table_name("protein_features", emb.shape[1]),
                          normalization=normalization)
