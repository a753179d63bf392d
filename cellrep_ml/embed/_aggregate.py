"""Per-protein profiles: one vector per protein from the vectors of its cells."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from cellrep_ml.embed._groups import group_codes, group_sums
from cellrep_ml.embed._normalize import NORMALIZATIONS, per_cell_matrix
from cellrep_ml.embed._vectors import vector_series
from cellrep_ml.errors import InputError

__all__ = ["PROFILE_STATS", "protein_profiles"]

PROFILE_STATS = ("mean", "median")


def protein_profiles(
    cells: pl.DataFrame,
    embeddings: np.ndarray,
    *,
    split: str | None = "test",
    stats: Sequence[str] = PROFILE_STATS,
    normalization: str = "none",
) -> pl.DataFrame:
    """Mean and/or median of each protein's cell vectors, over the cells of one split.

    Proteins are profiled on held-out cells (the ``test`` split) so that a protein's
    profile never averages cells the model was trained on (Lu et al. 2019 average the
    features of a protein's cells; Kobayashi et al. 2021 use held-out cells).

    Parameters
    ----------
    cells : pl.DataFrame
        The cell index (``CELL_INDEX_SCHEMA``): needs ``protein``, ``split`` (unless
        ``split`` is None) and uses ``dataset`` where present.
    embeddings : (N, D) ndarray
        Row i belongs to row i of ``cells`` (normalised or not).
    split : str or None
        Cells of this split only; ``None`` takes every cell.
    stats : sequence of {"mean", "median"}
        Statistics computed, one output row per protein and statistic.
    normalization : {"plate", "mad", "none"}
        How ``embeddings`` were normalised; recorded in the output.

    Returns
    -------
    pl.DataFrame
        Columns ``dataset``, ``protein``, ``n_cells`` (Int64), ``stat``,
        ``normalization``, ``features`` (Array(Float32, D)); sorted by dataset, protein,
        then statistic in the order of ``stats``.

    Raises
    ------
    ValueError
        On an unknown statistic or normalisation, or lengths that differ.
    InputError
        If no cell is in ``split``.
    """
    stats = tuple(stats)
    bad = [s for s in stats if s not in PROFILE_STATS]
    if bad or not stats:
        raise ValueError(f"stats must be a non-empty subset of {PROFILE_STATS}, got {stats}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    x = per_cell_matrix(embeddings, cells)
    table = cells if "dataset" in cells.columns else cells.with_columns(dataset=pl.lit(None, pl.Utf8))
    if split is None:
        rows = None
    else:
        rows = np.flatnonzero((table.get_column("split") == split).to_numpy())
        if rows.size == 0:
            raise InputError(f"no cell is in split {split!r}; cannot profile proteins",
                             expected="cells of that split", received=f"{cells.height} cells")
        if rows.size == table.height:
            rows = None  # every cell: read x in place
        else:
            table = table[rows]
    codes, keys = group_codes(table, ["dataset", "protein"])
    counts = np.bincount(codes, minlength=keys.height)
    parts = []
    for stat in stats:
        if stat == "mean":
            vec = group_sums(x, codes, keys.height, rows) / counts[:, None]
        else:
            vec = _group_medians(x, codes, keys.height, rows)
        parts.append(keys.with_columns(
            n_cells=pl.Series(counts, dtype=pl.Int64), stat=pl.lit(stat),
            normalization=pl.lit(normalization), features=vector_series("features", vec)))
    order = {s: i for i, s in enumerate(stats)}
    return (pl.concat(parts)
            .with_columns(_o=pl.col("stat").replace_strict(order, return_dtype=pl.Int64))
            .sort("dataset", "protein", "_o").drop("_o"))


def _group_medians(x: np.ndarray, codes: np.ndarray, n_groups: int,
                   rows: np.ndarray | None) -> np.ndarray:
    """(n_groups, D) feature-wise medians; one vectorised median per group."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    src = order if rows is None else rows[order]
    out = np.empty((n_groups, x.shape[1]), np.float32)
    for g in range(n_groups):
        out[g] = np.median(x[src[bounds[g]:bounds[g + 1]]], axis=0)
    return out
