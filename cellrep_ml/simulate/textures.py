"""Cheap random textures for rendering: smooth noise, ridge networks, weighted sampling."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["ridges", "sample_pixels", "smooth_noise"]


@lru_cache(maxsize=1024)
def _lerp_index(n_out: int, n_coarse: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour on the coarse grid and the weight of the right one, per output pixel."""
    pos = np.arange(n_out, dtype=np.float64) / scale
    lo = np.minimum(np.floor(pos).astype(np.int64), max(n_coarse - 2, 0))
    return lo, (pos - lo).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean noise of about unit variance, correlated over about ``scale`` pixels.

    White noise on a grid ``scale`` times coarser, bilinearly upsampled one axis at a time:
    far cheaper than Gaussian-filtering full-resolution noise, and the PSF blur applied to
    every channel later hides the interpolation's kinks. (Plain gathers rather than an
    interpolation-matrix product: small BLAS calls are slow when BLAS spins up threads.)

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (H, W) tuple of int
    scale : float
        Correlation length, pixels (>= 1; rounded to a quarter pixel).

    Returns
    -------
    (H, W) ndarray of float32
    """
    scale = max(round(float(scale) * 4) / 4, 1.0)
    h, w = shape
    gh, gw = int(np.ceil((h - 1) / scale)) + 2, int(np.ceil((w - 1) / scale)) + 2
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    lo, t = _lerp_index(h, gh, scale)
    t = t[:, None]
    rows = coarse[lo] * (1 - t) + coarse[lo + 1] * t  # (h, gw)
    lo, t = _lerp_index(w, gw, scale)
    out = rows[:, lo] * (1 - t) + rows[:, lo + 1] * t  # (h, w)
    # Bilinear interpolation of unit white noise has mean variance (2/3)^2: undo it.
    out *= np.float32(1.5)
    return out


def ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero crossings of ``noise``: a reticular network in [0, 1].

    ``width`` is in units of the noise's standard deviation; ~0.2 gives lines about a
    fifth of the noise's correlation length wide.
    """
    z = noise * np.float32(1.0 / width)
    return np.exp(-z * z)


def sample_pixels(
    rng: np.random.Generator, weights: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` sub-pixel positions with probability proportional to ``weights``.

    Parameters
    ----------
    rng : numpy.random.Generator
    weights : (H, W) ndarray
        Non-negative; zero outside the region to sample.
    n : int

    Returns
    -------
    ys, xs : (m,) ndarray of float
        Positions in the array's coordinates (``m = n``, or 0 if all weights are zero),
        jittered uniformly within the drawn pixel.
    """
    flat = weights.ravel()
    cdf = np.cumsum(flat, dtype=np.float64)
    total = cdf[-1] if cdf.size else 0.0
    if n <= 0 or total <= 0:
        return np.empty(0), np.empty(0)
    idx = np.searchsorted(cdf, rng.random(n) * total, side="right")
    idx = np.minimum(idx, flat.size - 1)
    ys, xs = np.divmod(idx, weights.shape[1])
    jitter = rng.random((2, n)) - 0.5
    return ys + jitter[0], xs + jitter[1]
