"""Vectors inside tables: an (N, D) array as one fixed-size ``pl.Array`` column and back.

A fixed-size column travels through Arrow as ``fixed_size_list<float>[D]``, which DuckDB
reads as ``FLOAT[D]`` and anndata/numpy as an (N, D) block, all without per-row Python.
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["vector_series", "vectors_of"]


def vector_series(name: str, vectors: np.ndarray) -> pl.Series:
    """An (N, D) array as a ``pl.Array(pl.Float32, D)`` series.

    Parameters
    ----------
    name : str
        Column name.
    vectors : (N, D) ndarray
        Cast to float32.

    Returns
    -------
    (N,) pl.Series of Array(Float32, D)

    Raises
    ------
    ValueError
        If ``vectors`` is not two-dimensional or has no columns.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"vectors of shape (N, D) with D >= 1 expected, got {x.shape}")
    return pl.Series(name, x, dtype=pl.Array(pl.Float32, x.shape[1]))


def vectors_of(df: pl.DataFrame, column: str) -> np.ndarray:
    """The (N, D) float32 block of a fixed-size (``pl.Array``) or list column.

    Raises
    ------
    ValueError
        If the column is missing, holds nulls, or its lists differ in length.
    """
    if column not in df.columns:
        raise ValueError(f"no vector column {column!r}; columns are {df.columns}")
    s = df.get_column(column)
    if s.null_count():
        raise ValueError(f"vector column {column!r} has {s.null_count()} null rows")
    if isinstance(s.dtype, pl.List):
        lengths = s.list.len().unique()
        if lengths.len() > 1:
            raise ValueError(f"vector column {column!r} holds lists of lengths {lengths.to_list()}")
        dim = int(lengths[0]) if len(s) else 0
        s = s.cast(pl.Array(pl.Float32, dim)) if dim else s
    if not isinstance(s.dtype, pl.Array):
        if len(s) == 0:
            return np.zeros((0, 0), np.float32)
        raise ValueError(f"column {column!r} is {s.dtype}, not a vector column")
    return np.ascontiguousarray(s.cast(pl.Array(pl.Float32, s.dtype.size)).to_numpy(), np.float32)
