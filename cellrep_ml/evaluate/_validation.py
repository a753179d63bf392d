"""Boundary checks shared by every evaluation: shapes, finiteness, label vectors.

Each check names the argument it rejects, what was expected and what was received, so a
caller can fix the input without reading the metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from cellrep_ml.errors import InputError


def check_matrix(x: object, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Return ``x`` as a finite float64 ``(N, D)`` array or raise naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2D array", expected="shape (N, D)",
                         received=f"shape {arr.shape}")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise InputError(f"{name} is too small", expected=f"at least {min_rows} rows and 1 column",
                         received=f"shape {arr.shape}")
    _check_finite(arr, name)
    return arr


def check_vector(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a finite float64 ``(N,)`` array or raise naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1D array", expected="shape (N,)",
                         received=f"shape {arr.shape}")
    _check_finite(arr, name)
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0]
        where = ", ".join(str(int(i)) for i in first)
        raise InputError(f"{name} contains NaN or inf ({int(bad.sum())} values, first at [{where}])",
                         expected="finite values")


def check_labels(labels: Sequence | np.ndarray, name: str, n: int) -> np.ndarray:
    """Return ``labels`` as a 1D array of length ``n`` without missing values."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1D array", expected="shape (N,)",
                         received=f"shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{name} has the wrong length", expected=f"{n} entries (one per row)",
                         received=f"{arr.shape[0]}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf", expected="a label per row")
    if arr.dtype == object and any(v is None for v in arr):
        raise InputError(f"{name} contains None", expected="a label per row")
    return arr


def check_annotations(annotations: pl.DataFrame, name: str, protein_col: str,
                      term_col: str) -> pl.DataFrame:
    """Return the distinct non-null ``(protein, term)`` rows of an annotation frame."""
    if not isinstance(annotations, pl.DataFrame):
        raise InputError(f"{name} must be a polars DataFrame", expected="pl.DataFrame",
                         received=type(annotations).__name__)
    missing = [c for c in (protein_col, term_col) if c not in annotations.columns]
    if missing:
        raise InputError(f"{name} lacks column(s) {missing}",
                         expected=f"columns {protein_col!r} and {term_col!r}",
                         received=str(annotations.columns))
    return (annotations.select(pl.col(protein_col).cast(pl.String).alias("protein"),
                               pl.col(term_col).cast(pl.String).alias("term"))
            .drop_nulls().unique().sort("protein", "term"))


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Standardise each column to mean 0, variance 1; constant columns become 0."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0  # a constant feature carries no information: map it to 0
    return (x - mean) / std
