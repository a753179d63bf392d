"""Per-plate normalisation of cell embeddings, as image-based profiling does it.

Plate effects (staining, focus, illumination) shift every feature of every cell of a
plate; standardising each feature within each plate removes them (Caicedo et al. 2017,
"Data-analysis strategies for image-based cell profiling", Nat. Methods 14:849, section
"Normalization"). Two scalings are offered:

``"plate"``
    z-score: ``(x - mean_plate) / sd_plate`` (population sd, ddof = 0).
``"mad"``
    robust z-score: ``(x - median_plate) / (1.4826 · MAD_plate)``; the factor makes the
    MAD a consistent estimator of the sd for normal data, and a few outlier cells do not
    move the centre or the scale (pycytominer's ``mad_robustize``).
``"none"``
    the embeddings unchanged (as float32).

A feature that is constant within a plate (scale 0) is only centred, not divided.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from cellrep_ml.embed._groups import group_codes, group_sums

__all__ = ["MAD_SCALE", "NORMALIZATIONS", "PLATE_KEY", "normalize"]

NORMALIZATIONS = ("plate", "mad", "none")


def per_cell_matrix(embeddings: np.ndarray, cells: pl.DataFrame) -> np.ndarray:
    """``embeddings`` as a 2-D array with one row per cell of ``cells``, or a ValueError."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] != cells.height:
        raise ValueError(f"embeddings of shape ({cells.height}, D) expected (one row per cell), "
                         f"got {x.shape}")
    return x

#: 1 / Φ⁻¹(3/4): turns the median absolute deviation into a normal sd estimate.
MAD_SCALE = 1.4826

#: Columns naming a plate; plate names are only unique within a dataset and cell line.
PLATE_KEY = ("dataset", "cell_line", "plate")

Normalization = Literal["plate", "mad", "none"]

#: Rows normalised at a time: bounds the temporaries to a few hundred MB.
_CHUNK_ROWS = 262_144


def normalize(
    embeddings: np.ndarray,
    cells: pl.DataFrame,
    method: Normalization = "plate",
) -> np.ndarray:
    """Normalise cell embeddings per plate.

    Parameters
    ----------
    embeddings : (N, D) ndarray
        Row i belongs to row i of ``cells``.
    cells : pl.DataFrame
        The cell index (``CELL_INDEX_SCHEMA``); needs ``plate`` and uses ``dataset`` and
        ``cell_line`` where present to tell plates apart.
    method : {"plate", "mad", "none"}
        See the module docstring.

    Returns
    -------
    (N, D) ndarray of float32

    Raises
    ------
    ValueError
        If ``method`` is unknown, the lengths differ, ``plate`` is missing, or the
        embeddings hold NaN or infinity.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; expected one of {NORMALIZATIONS}")
    x = per_cell_matrix(embeddings, cells)
    if method == "none":
        return np.asarray(x, np.float32)
    if "plate" not in cells.columns:
        raise ValueError(f"normalization {method!r} groups cells by plate; the cell table "
                         f"has no 'plate' column (columns: {cells.columns})")
    # A NaN or infinity anywhere makes its column's float64 sum non-finite (finite float32
    # values cannot overflow it): one cheap pass instead of an (N, D) boolean mask.
    if not np.isfinite(x.sum(axis=0, dtype=np.float64)).all():
        raise ValueError("embeddings hold NaN or infinite values; cannot normalise them")
    codes, keys = group_codes(cells, [c for c in PLATE_KEY if c in cells.columns])
    if method == "plate":
        centre, scale = _plate_moments(x, codes, keys.height)
    else:
        centre, scale = _plate_median_mad(x, codes, keys.height)
    scale[scale == 0] = 1.0
    inverse = (1.0 / scale).astype(np.float32)
    out = np.empty(x.shape, np.float32)
    for a in range(0, x.shape[0], _CHUNK_ROWS):
        b = min(a + _CHUNK_ROWS, x.shape[0])
        g = codes[a:b]
        np.subtract(x[a:b], centre[g], out=out[a:b])
        out[a:b] *= inverse[g]
    return out


def _plate_moments(x: np.ndarray, codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) float32 mean and population sd per plate, by two passes (no cancellation)."""
    counts = np.bincount(codes, minlength=n)[:, None]
    mean = (group_sums(x, codes, n) / counts).astype(np.float32)
    ss = np.zeros((n, x.shape[1]), np.float64)
    for a in range(0, x.shape[0], _CHUNK_ROWS):
        b = min(a + _CHUNK_ROWS, x.shape[0])
        d = x[a:b] - mean[codes[a:b]]  # (b - a, D) centred
        ss += group_sums(d * d, codes[a:b], n)
    return mean, np.sqrt(ss / counts).astype(np.float32)


def _plate_median_mad(x: np.ndarray, codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) float32 median and 1.4826 · MAD per plate; a loop over the few plates."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n + 1))
    centre = np.empty((n, x.shape[1]), np.float32)
    scale = np.empty((n, x.shape[1]), np.float32)
    for g in range(n):
        block = x[order[bounds[g]:bounds[g + 1]]]  # (n_plate, D)
        centre[g] = np.median(block, axis=0)
        scale[g] = MAD_SCALE * np.median(np.abs(block - centre[g]), axis=0)
    return centre, scale
