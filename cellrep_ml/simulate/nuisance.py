"""Nuisance that carries no identity: plate and well effects, illumination, focus, camera.

Strong on purpose — plate intensity factors of 0.5–2x, 15–35 % vignetting, background
offsets and defocused fields — so that a model that reconstructs pixels can be fooled by
them unless it learns what matters. The camera follows the Poisson–Gaussian model
(shot noise with variance equal to the photon count, Gaussian read noise), using the
normal approximation of the Poisson law, which is exact enough above a few photons and
5x cheaper than drawing Poisson variates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FieldNuisance", "PlateNuisance", "apply_camera", "draw_field", "draw_plate",
           "illumination"]


@dataclass(frozen=True)
class PlateNuisance:
    """What one plate shares: intensity factor and background per channel, illumination.

    Parameters
    ----------
    intensity : tuple of float
        Multiplier of each channel's signal (staining / exposure batch effect).
    background : tuple of float
        Background photons per pixel, per channel.
    vignetting : float
        Relative intensity lost at the field corners (0 = flat).
    vignette_center : (float, float)
        Optical centre relative to the field centre, in half-widths.
    gradient : (float, float)
        Linear illumination slope along y and x across the field.
    """

    intensity: tuple[float, ...]
    background: tuple[float, ...]
    vignetting: float
    vignette_center: tuple[float, float]
    gradient: tuple[float, float]


@dataclass(frozen=True)
class FieldNuisance:
    """Everything that degrades one field; built from its plate plus per-field draws.

    Parameters
    ----------
    plate : PlateNuisance
    well_factor : float
        Multiplier of every channel in the well (seeding, edge effects).
    focus_sigma : float
        Extra Gaussian blur from defocus, pixels (0 = in focus).
    gain : float
        Camera counts per photon.
    offset : float
        Camera offset, counts.
    read_noise : float
        Read-noise standard deviation, counts.
    """

    plate: PlateNuisance
    well_factor: float
    focus_sigma: float
    gain: float = 2.0
    offset: float = 100.0
    read_noise: float = 6.0


def draw_plate(rng: np.random.Generator, n_channels: int) -> PlateNuisance:
    """Random plate-level nuisance for ``n_channels`` channels."""
    common = rng.lognormal(0.0, 0.4)
    return PlateNuisance(
        intensity=tuple(float(common * f) for f in rng.lognormal(0.0, 0.2, n_channels)),
        background=tuple(float(b) for b in rng.uniform(5.0, 80.0, n_channels)),
        vignetting=float(rng.uniform(0.15, 0.35)),
        vignette_center=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
        gradient=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
    )


def draw_field(rng: np.random.Generator, plate: PlateNuisance, well_factor: float) -> FieldNuisance:
    """Per-field nuisance: mostly in focus, about one field in five visibly defocused."""
    defocus = rng.random() < 0.2
    focus = float(rng.uniform(0.8, 2.2) if defocus else rng.uniform(0.0, 0.4))
    return FieldNuisance(plate=plate, well_factor=float(well_factor), focus_sigma=focus)


def illumination(plate: PlateNuisance, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 illumination profile: vignetting times a linear gradient, max ~1."""
    h, w = shape
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    cy, cx = plate.vignette_center
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / np.float32(2.0)
    gy, gx = plate.gradient
    flat = 1.0 + np.float32(gy / 2) * y + np.float32(gx / 2) * x
    return ((1.0 - np.float32(plate.vignetting) * r2) * flat).astype(np.float32)


def apply_camera(
    rng: np.random.Generator, photons: np.ndarray, nuisance: FieldNuisance
) -> np.ndarray:
    """Poisson–Gaussian camera: photons → uint16 counts.

    Parameters
    ----------
    rng : numpy.random.Generator
    photons : ndarray of float32
        Expected photons per pixel (signal + background), any shape.
    nuisance : FieldNuisance
        Gain, offset and read noise.

    Returns
    -------
    ndarray of uint16
        ``offset + gain S + sqrt(gain^2 S + read_noise^2) n``, rounded and clipped.
    """
    s = np.maximum(photons, np.float32(0.0)).astype(np.float32, copy=False)
    g = np.float32(nuisance.gain)
    # Shot and read noise are independent Gaussians: one draw with the summed variance.
    sd = s * (g * g)
    sd += np.float32(nuisance.read_noise**2)
    np.sqrt(sd, out=sd)
    sd *= rng.standard_normal(s.shape, dtype=np.float32)
    sd += s * g
    sd += np.float32(nuisance.offset)
    np.rint(sd, out=sd)
    np.clip(sd, 0, 65535, out=sd)
    return sd.astype(np.uint16)
