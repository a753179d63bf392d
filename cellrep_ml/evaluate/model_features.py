"""Features the warehouse does not hold, recomputed for evaluation from the crops.

``cell_embeddings`` keeps one layer per model. Two evaluations need others: the per-layer
kNN of PCI (Lu et al. 2019, Table 1: conv1–conv5) and cytoself's local-code histograms
for the feature spectrum (Kobayashi et al. 2021, Fig. 5) when the features step did not
store them. Both re-embed a capped, seeded sample of the evaluated cells with the same
registered model version, reading each cell's crop through its cell id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cellrep_ml.config import crops_dir
from cellrep_ml.errors import InputError

__all__ = ["PCI_LAYERS", "embed_sample", "load_model"]

#: Source-encoder layers of PCI evaluated in Table 1 of Lu et al. 2019.
PCI_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")


def load_model(dataset: str, method: str, version: str, *, home: Path | None = None):
    """The registered ``cellrep-<dataset>-<method>`` ``version`` and its resolved config.

    Raises
    ------
    LookupError
        If the version is not registered or has no cellrep checkpoint.
    """
    from cellrep_ml.model_registry import choose_version, load_version

    return load_version(choose_version(dataset, method, home=home, version=version), home=home)


def embed_sample(model, config: dict, cells: pl.DataFrame, *, dataset: str, layer: str,
                 home: Path | None = None, batch_size: int = 128) -> np.ndarray:
    """Features of ``layer`` for the given cells, read from their crop stores.

    Parameters
    ----------
    model : nn.Module
        A cellrep model (see :func:`cellrep_ml.embed.embed_cells`).
    config : dict
        The run's resolved ``config.json``; ``config["data"]["channels"]`` names the crop
        channels in model order (every store channel when absent).
    cells : pl.DataFrame
        Rows with ``cell_line`` and ``cell_id`` (e.g. from ``cell_embeddings``).
    dataset : str
        Dataset name; crops are read from ``crops/<dataset>/<cell_line>/``.
    layer : str
        Passed to ``model.features``.

    Returns
    -------
    (N, D) float32 ndarray
        Row i for ``cells`` row i.

    Raises
    ------
    InputError
        A cell line's crops folder is missing or a cell id is not in its cell index.
    """
    from cellrep_ml.embed import embed_cells

    channels = (config.get("data") or {}).get("channels")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    indexed = cells.select("cell_line", "cell_id").with_row_index("_row")
    for (cell_line,), group in indexed.group_by(["cell_line"], maintain_order=True):
        folder = crops_dir(dataset, str(cell_line), home)
        index_path = folder / "cells.parquet"
        if not index_path.is_file():
            raise InputError("crops of a cell line not found", path=index_path,
                             expected="the cell_crops partition of every evaluated cell line")
        index = pl.read_parquet(index_path, columns=["cell_id", "crop_index"])
        joined = group.join(index, on="cell_id", how="left")
        lost = joined.filter(pl.col("crop_index").is_null())
        if lost.height:
            raise InputError("cells are not in the crops' cell index", path=index_path,
                             expected="the cells the embeddings were computed from",
                             received=f"{lost.height} unknown, e.g. {lost['cell_id'][0]!r}")
        emb = embed_cells(model, folder / "crops.zarr", layer=layer, batch_size=batch_size,
                          indices=joined["crop_index"].to_numpy(), channels=channels)
        parts.append((joined["_row"].to_numpy(), emb))
    dim = parts[0][1].shape[1]
    out = np.empty((cells.height, dim), dtype=np.float32)
    for rows, emb in parts:
        out[rows] = emb
    return out
