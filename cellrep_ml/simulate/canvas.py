"""Where pattern renderers draw: a dense layer plus point layers, blurred once at the end.

Renderers add two kinds of signal for a cell: *dense* maps (networks, rims, diffuse
fills) already masked to the cell's box, and *points* (vesicles, speckles) given as
positions and amplitudes. Points are binned into one impulse layer per spot size and each
layer is blurred once, so a field with thousands of puncta costs a few Gaussian filters
instead of thousands of stamps. The 3D canvas extrudes the same 2D drawings through each
cell's z-extent (nuclear signal only within the nucleus' ellipsoid).

Regions name where in the cell a drawing lives — ``"nucleus"``, ``"envelope"``,
``"cyto"``, ``"cell"`` or ``"membrane"`` — the 2D canvas ignores them.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage as ndi

from cellrep_ml.simulate.cellctx import CellContext

__all__ = ["Canvas2D", "Canvas3D", "CellZ"]

_SIGMA_STEP = 0.25  # spot sizes are binned to this many pixels: one blur per bin


class Canvas2D:
    """A 2D channel being drawn: (H, W) float32 dense layer + binned point layers."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.dense = np.zeros(shape, dtype=np.float32)
        self._points: dict[float, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)

    def add(self, ctx: CellContext, img: np.ndarray, region: str) -> None:
        """Add a dense drawing ``img`` (box-shaped, already masked) of ``region``."""
        self.dense[ctx.sl] += img

    def add_points(self, ctx: CellContext, ys: np.ndarray, xs: np.ndarray, amp: np.ndarray | float,
                   sigma: float, region: str) -> None:
        """Add spots of standard deviation ``sigma`` and peak ``amp`` at box positions."""
        if len(ys) == 0:
            return
        gy = np.rint(ys + ctx.sl[0].start).astype(np.int64)
        gx = np.rint(xs + ctx.sl[1].start).astype(np.int64)
        ok = (gy >= 0) & (gy < self.shape[0]) & (gx >= 0) & (gx < self.shape[1])
        key = max(_SIGMA_STEP, round(sigma / _SIGMA_STEP) * _SIGMA_STEP)
        # Impulse mass so that the blurred spot peaks at ``amp``.
        mass = np.broadcast_to(np.asarray(amp, dtype=np.float64), ys.shape) * (2 * np.pi * key**2)
        flat = gy[ok] * self.shape[1] + gx[ok]
        self._points[key].append((flat, mass[ok]))

    def _point_layer(self, items: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        flat = np.concatenate([f for f, _ in items])
        mass = np.concatenate([m for _, m in items])
        size = int(np.prod(self.shape))
        return np.bincount(flat, weights=mass, minlength=size).astype(np.float32).reshape(self.shape)

    def render(self, psf_sigma: float | tuple[float, ...]) -> np.ndarray:
        """The drawn channel, blurred by the PSF (and each point layer by its spot size)."""
        out = self.dense
        for key in sorted(self._points):
            layer = self._point_layer(self._points[key])
            out += ndi.gaussian_filter(layer, self._spot_sigma(key), truncate=3.0)
        self._points.clear()
        if np.any(np.asarray(psf_sigma) > 0):
            out = ndi.gaussian_filter(out, psf_sigma, truncate=3.0)
        return out

    def _spot_sigma(self, key: float) -> float | tuple[float, ...]:
        return key


class CellZ:
    """The z-extent of one cell in a 3D field: a dome-shaped cell around an ellipsoidal nucleus.

    Parameters
    ----------
    ctx : CellContext
    size_z : int
        Number of slices.
    bottom : float
        Slice of the cell's base (the coverslip side).
    height : float
        Cell height at its thickest point, slices.
    nucleus_half : float
        Half-height of the nucleus at its centre, slices.
    """

    def __init__(self, ctx: CellContext, size_z: int, bottom: float, height: float,
                 nucleus_half: float):
        self.z = np.arange(size_z, dtype=np.float32)[:, None, None]
        edt = ctx.edt
        peak = float(edt.max()) or 1.0
        self.top = (bottom + height * (0.35 + 0.65 * np.sqrt(edt / peak))).astype(np.float32)
        self.zc = bottom + 0.45 * height
        half = nucleus_half * np.sqrt(np.clip(1.0 - ctx.d_nuc**2, 0.0, None))
        self.nuc_half = np.where(ctx.nm, half, 0.0).astype(np.float32)
        # The nucleus never pokes out of the cell's top.
        self.top = np.where(ctx.nm, np.maximum(self.top, self.zc + self.nuc_half + 1.0), self.top)
        self.bottom = float(bottom)
        self.ctx = ctx
        env_d = np.minimum(ctx.d_nuc, np.float32(0.97))
        self.env_half = (nucleus_half * np.sqrt(1.0 - env_d**2) + 0.7).astype(np.float32)

    def mask(self, region: str) -> np.ndarray:
        """(Z, h, w) bool mask of ``region`` in the cell's box."""
        z, ctx = self.z, self.ctx
        cell = (z >= self.bottom) & (z <= self.top) & ctx.cm
        if region == "cell" or region == "membrane":
            return cell
        nucleus = (np.abs(z - self.zc) <= self.nuc_half) & ctx.nm
        if region == "nucleus":
            return nucleus
        if region == "envelope":
            return (np.abs(z - self.zc) <= self.env_half) & ctx.cm
        if region == "cyto":
            return cell & ~nucleus
        raise ValueError(f"unknown region {region!r}")

    def sample_z(self, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray,
                 region: str) -> np.ndarray:
        """A z position for each box position, uniform within the region's extent there."""
        iy = np.clip(np.rint(ys).astype(int), 0, self.top.shape[0] - 1)
        ix = np.clip(np.rint(xs).astype(int), 0, self.top.shape[1] - 1)
        if region in ("nucleus", "envelope"):
            half = self.nuc_half[iy, ix] if region == "nucleus" else self.env_half[iy, ix]
            return self.zc + rng.uniform(-1, 1, len(ys)) * half
        lo, hi = self.bottom, self.top[iy, ix]
        return lo + rng.random(len(ys)) * (hi - lo)


class Canvas3D(Canvas2D):
    """A 3D channel: (Z, H, W) dense layer; 2D drawings are extruded through each cell."""

    def __init__(self, shape: tuple[int, int, int], zinfo: dict[int, CellZ], sigma_z_ratio: float):
        super().__init__(shape[1:])
        self.shape3 = shape
        self.dense = np.zeros(shape, dtype=np.float32)
        self.zinfo = zinfo
        self.sigma_z_ratio = sigma_z_ratio

    def add(self, ctx: CellContext, img: np.ndarray, region: str) -> None:
        cz = self.zinfo[ctx.label]
        block = img[None] * cz.mask(region)
        if region == "membrane":
            # The apical surface is membrane too: light the top slice under the cell.
            top = np.clip(np.rint(cz.top), 0, self.shape3[0] - 1).astype(int)
            cap = (cz.z == top[None]) & ctx.cm
            block = block + cap * np.float32(img.max(initial=0.0))
        self.dense[(slice(None), *ctx.sl)] += block

    def add_points(self, ctx: CellContext, ys: np.ndarray, xs: np.ndarray, amp: np.ndarray | float,
                   sigma: float, region: str) -> None:
        if len(ys) == 0:
            return
        cz = self.zinfo[ctx.label]
        zs = cz.sample_z(ctx.rng, ys, xs, region)
        gz = np.rint(zs).astype(np.int64)
        gy = np.rint(ys + ctx.sl[0].start).astype(np.int64)
        gx = np.rint(xs + ctx.sl[1].start).astype(np.int64)
        nz, ny, nx = self.shape3
        ok = (gz >= 0) & (gz < nz) & (gy >= 0) & (gy < ny) & (gx >= 0) & (gx < nx)
        key = max(_SIGMA_STEP, round(sigma / _SIGMA_STEP) * _SIGMA_STEP)
        # A 3D Gaussian spot's peak is mass / ((2 pi)^1.5 sx sy sz).
        sz = key * self.sigma_z_ratio
        mass = np.broadcast_to(np.asarray(amp, dtype=np.float64), ys.shape) * (
            (2 * np.pi) ** 1.5 * key * key * sz)
        flat = (gz[ok] * ny + gy[ok]) * nx + gx[ok]
        self._points[key].append((flat, mass[ok]))

    def _point_layer(self, items: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        flat = np.concatenate([f for f, _ in items])
        mass = np.concatenate([m for _, m in items])
        size = int(np.prod(self.shape3))
        return np.bincount(flat, weights=mass, minlength=size).astype(np.float32).reshape(self.shape3)

    def _spot_sigma(self, key: float) -> tuple[float, float, float]:
        return (key * self.sigma_z_ratio, key, key)
