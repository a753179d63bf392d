"""Integer group codes of table rows, and fast per-group sums of their vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

#: Rows per sparse product. Each product sums in float32 (3x faster than converting
#: the block to float64), and the partial sums of successive chunks add up in float64,
#: so rounding grows with a group's cells within one chunk, not with its total.
_CHUNK_ROWS = 262_144


def group_codes(df: pl.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, pl.DataFrame]:
    """Code of each row's group and the groups, sorted by ``by``.

    Returns
    -------
    codes : (N,) ndarray of int64
        ``keys`` row of each row of ``df``.
    keys : pl.DataFrame
        One row per distinct value of ``by``, sorted.
    """
    cols = list(by)
    keys = df.select(cols).unique().sort(cols)
    coded = df.select(cols).join(keys.with_row_index("_code"), on=cols, how="left",
                                 nulls_equal=True, maintain_order="left")
    return coded.get_column("_code").to_numpy().astype(np.int64), keys


def group_sums(x: np.ndarray, codes: np.ndarray, n_groups: int,
               rows: np.ndarray | None = None) -> np.ndarray:
    """Per-group sums of rows of ``x``: float32 within a chunk of rows, float64 across.

    Parameters
    ----------
    x : (N, D) ndarray
    codes : (n,) ndarray of int
        Group of each summed row, in ``[0, n_groups)``.
    n_groups : int
    rows : (n,) ndarray of int, optional
        Rows of ``x`` that ``codes`` describe; default all N rows.

    Returns
    -------
    (n_groups, D) ndarray of float64
    """
    n = codes.size
    out = np.zeros((n_groups, x.shape[1]), np.float64)
    for a in range(0, n, _CHUNK_ROWS):
        b = min(a + _CHUNK_ROWS, n)
        block = x[a:b] if rows is None else x[rows[a:b]]
        # A (G, b - a) indicator matrix times the block: one pass, no per-group loop.
        ind = sp.csr_matrix((np.ones(b - a, np.float32), (codes[a:b], np.arange(b - a))),
                            shape=(n_groups, b - a))
        out += ind @ block.astype(np.float32, copy=False)
    return out
