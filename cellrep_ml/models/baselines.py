"""Baselines of Lu et al. (PLoS Comput Biol 2019, Fig 2): classic features, autoencoder, random encoder.

- :func:`classic_features` — hand-designed features in the spirit of the paper's "classic
  computer vision" baseline: protein intensity statistics, protein–marker Pearson
  correlations and Haralick texture. A numpy function, not a model: there is nothing to
  train, so it is not in the :func:`cellrep_ml.models.build` registry; call it on crops.
- ``"autoencoder"`` — the PCI source encoder and decoder trained to reconstruct the source
  crop itself (the paper's autoencoder baseline, 42.50 % kNN accuracy on yeast).
- ``"pci_random"`` — a randomly initialised PCI source encoder, never trained: the control
  that separates what the architecture gives from what the pretext task teaches.

Speed of :func:`classic_features` on 64×64 crops (2–3 channels, 5 distances × 4 angles),
one CPU core of a busy shared machine: 1,300–3,000 crops/s. GLCMs of 32 crops at a time
come from one ``numpy.bincount``; a per-crop ``skimage`` loop reaches about 430 crops/s for
the GLCM properties alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cellrep_ml.models._registry import register_model
from cellrep_ml.models.pci import (
    PCIConfig,
    PCIDecoder,
    PCIEncoder,
    check_crops,
    crops_from,
    default_feature_layer,
    glorot_init,
    resolve_config,
)

__all__ = [
    "HARALICK_PROPERTIES",
    "classic_features",
    "AutoencoderConfig",
    "PCIAutoencoder",
    "RandomPCIConfig",
    "RandomPCIEncoder",
    "autoencoder",
    "pci_random",
]

# graycoprops names, in output order.
HARALICK_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


# --------------------------------------------------------------------------------------
# Classic features
# --------------------------------------------------------------------------------------


def _quantize(images: np.ndarray, levels: int) -> np.ndarray:
    """Per-image min–max scaling to integers ``0 … levels - 1``; a constant image maps to 0."""
    lo = images.min(axis=(1, 2), keepdims=True)
    span = images.max(axis=(1, 2), keepdims=True) - lo
    scaled = (images - lo) / np.where(span > 0, span, 1.0)  # [0, 1]
    return np.minimum((scaled * levels).astype(np.int64), levels - 1)


def _glcm(q: np.ndarray, row_code: np.ndarray, dr: int, dc: int, levels: int) -> np.ndarray:
    """Symmetric, normalised co-occurrence matrices of every image at offset (dr, dc).

    Same pairs as ``skimage.feature.graycomatrix(..., symmetric=True, normed=True)``:
    pixel (r, c) with pixel (r + dr, c + dc), both inside the image.

    Parameters
    ----------
    q : (N, H, W) int ndarray
        Grey levels in ``0 … levels - 1``.
    row_code : (N, H, W) int ndarray
        ``n · levels² + q · levels``, precomputed once for all offsets: adding the partner
        pixel's level gives the flat index of the (image, i, j) bin.

    Returns
    -------
    (N, levels, levels) float64 ndarray
    """
    n, h, w = q.shape
    r0, r1 = max(0, -dr), min(h, h - dr)
    c0, c1 = max(0, -dc), min(w, w - dc)
    index = row_code[:, r0:r1, c0:c1] + q[:, r0 + dr : r1 + dr, c0 + dc : c1 + dc]
    counts = np.bincount(index.ravel(), minlength=n * levels * levels)
    p = counts.reshape(n, levels, levels).astype(np.float64)
    p += p.transpose(0, 2, 1)  # symmetric: count (i, j) and (j, i)
    p /= np.maximum(p.sum(axis=(1, 2), keepdims=True), 1.0)  # an empty GLCM stays 0
    return p


def _glcm_props(p: np.ndarray) -> np.ndarray:
    """The six ``graycoprops`` properties of (N, L, L) symmetric normalised GLCMs, as (N, 6).

    Weighted sums become one matrix product; symmetry makes the row and column marginals
    equal, so correlation = (E[ij] − μ²) / σ².
    """
    n, levels, _ = p.shape
    i = np.arange(levels, dtype=np.float64)[:, None]
    j = np.arange(levels, dtype=np.float64)[None, :]
    weights = np.stack(
        [(i - j) ** 2, np.abs(i - j), 1.0 / (1.0 + (i - j) ** 2), i * j], axis=-1
    ).reshape(levels * levels, 4)
    flat = p.reshape(n, levels * levels)
    contrast, dissimilarity, homogeneity, e_ij = (flat @ weights).T  # (N,) each
    asm = np.einsum("nk,nk->n", flat, flat)
    marginal = p.sum(axis=2)  # (N, L)
    levels_f = np.arange(levels, dtype=np.float64)
    mu = marginal @ levels_f
    var = np.maximum(marginal @ levels_f**2 - mu**2, 0.0)
    flat_texture = np.sqrt(var) < 1e-15
    # graycoprops' convention: a flat texture is perfectly correlated with itself.
    correlation = np.where(flat_texture, 1.0, (e_ij - mu**2) / np.where(flat_texture, 1.0, var))
    return np.stack([contrast, dissimilarity, homogeneity, np.sqrt(asm), correlation, asm], axis=1)


def _is_constant(x: np.ndarray) -> np.ndarray:
    """Per-row test for a constant (N, K) array, exact (no round-off from a mean)."""
    return x.max(axis=1) == x.min(axis=1)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row Pearson r of (N, K) arrays; 0 where either row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    # r is undefined for a constant channel (and round-off in its mean would make it
    # arbitrary); 0 ("no linear association") keeps the feature matrix finite for
    # z-scoring and kNN downstream.
    undefined = _is_constant(x) | _is_constant(y)
    denom = np.sqrt(np.sum(xc**2, axis=1) * np.sum(yc**2, axis=1))
    r = np.sum(xc * yc, axis=1) / np.where(undefined, 1.0, denom)
    return np.where(undefined, 0.0, np.clip(r, -1.0, 1.0))


# Crops per GLCM batch: 32 crops × 32² bins keeps bincount's histogram in cache, which is
# about 2× faster than one histogram over every crop.
_CHUNK = 32


def _haralick(q: np.ndarray, distances: Sequence[int], levels: int) -> np.ndarray:
    """Angle-averaged Haralick properties of quantised images; (N, len(distances) · 6)."""
    n = q.shape[0]
    row_code = (np.arange(n) * levels * levels)[:, None, None] + q * levels  # (N, H, W)
    out = []
    for d in distances:
        props = np.zeros((n, len(HARALICK_PROPERTIES)))
        for angle in _ANGLES:
            # skimage's offsets: round(sin·d) rows, round(cos·d) columns.
            dr, dc = int(round(np.sin(angle) * d)), int(round(np.cos(angle) * d))
            props += _glcm_props(_glcm(q, row_code, dr, dc, levels))
        out.append(props / len(_ANGLES))
    return np.concatenate(out, axis=1)


def classic_features(
    crops: np.ndarray,
    *,
    protein_channel: int = 0,
    marker_channels: Sequence[int] | None = None,
    distances: Sequence[int] = (1, 2, 4, 8, 16),
    levels: int = 32,
    channel_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Hand-designed single-cell features: intensity, colocalisation and Haralick texture.

    Parameters
    ----------
    crops : (N, C, H, W) ndarray
        Single-cell crops, any real dtype.
    protein_channel : int
        Index of the tagged-protein channel.
    marker_channels : sequence of int, optional
        Channels to correlate the protein with; default every other channel.
    distances : sequence of int
        GLCM pixel distances; each must be smaller than the crop's height and width.
    levels : int
        Grey levels the protein channel is quantised to (per-crop min–max) for the GLCM.
    channel_names : sequence of str, optional
        Names of the C channels, used in feature names; default ``ch0``, ``ch1``, ….

    Returns
    -------
    features : (N, D) float64 ndarray
        D = 3 + len(marker_channels) + 6 · len(distances) (34 for one marker).
    names : list of str
        ``protein_sum``, ``protein_mean``, ``protein_std``, ``pearson_<protein>_<marker>``
        per marker, then ``haralick_<property>_d<distance>`` for each distance and
        property in :data:`HARALICK_PROPERTIES`.

    Notes
    -----
    - Intensity statistics use every pixel of the crop (no mask); ``std`` is the
      population standard deviation.
    - Pearson r is 0 when the protein or the marker channel is constant.
    - Haralick features come from symmetric, normalised GLCMs, averaged over the angles
      0, 45, 90 and 135 degrees; pixel offsets and the property formulas are those of
      ``skimage.feature.graycomatrix`` / ``graycoprops`` (a test checks equality). A
      constant crop has contrast 0 and, by graycoprops' convention, correlation 1.

    Examples
    --------
    >>> crops = np.random.default_rng(0).random((4, 2, 64, 64))
    >>> feats, names = classic_features(crops)
    >>> feats.shape, names[3]
    ((4, 34), 'pearson_ch0_ch1')
    """
    crops = np.asarray(crops)
    if crops.ndim != 4:
        raise ValueError(f"crops must be (N, C, H, W); got shape {crops.shape}")
    n, c, h, w = crops.shape
    if not 0 <= protein_channel < c:
        raise ValueError(f"protein_channel {protein_channel} is not in 0 … {c - 1}")
    if marker_channels is None:
        marker_channels = [k for k in range(c) if k != protein_channel]
    bad = [k for k in marker_channels if not 0 <= k < c]
    if bad:
        raise ValueError(f"marker channels {bad} are not in 0 … {c - 1}")
    too_far = [d for d in distances if not 0 < d < min(h, w)]
    if too_far:
        raise ValueError(f"GLCM distances {too_far} must be in 1 … {min(h, w) - 1} for {h}×{w} crops")
    if channel_names is None:
        channel_names = [f"ch{k}" for k in range(c)]
    if len(channel_names) != c:
        raise ValueError(f"channel_names has {len(channel_names)} names for {c} channels")

    data = crops.astype(np.float64, copy=False)
    protein = data[:, protein_channel]  # (N, H, W)
    flat = protein.reshape(n, -1)
    std = np.where(_is_constant(flat), 0.0, flat.std(axis=1))  # exact 0 for a flat crop
    columns = [flat.sum(axis=1), flat.mean(axis=1), std]
    pname = channel_names[protein_channel]
    names = ["protein_sum", "protein_mean", "protein_std"]
    for k in marker_channels:
        columns.append(_pearson(flat, data[:, k].reshape(n, -1)))
        names.append(f"pearson_{pname}_{channel_names[k]}")

    q = _quantize(protein, levels)  # (N, H, W) int
    texture = np.concatenate(
        [_haralick(q[s : s + _CHUNK], distances, levels) for s in range(0, n, _CHUNK)]
    )  # (N, len(distances) · 6)
    columns.extend(texture.T)
    names.extend(f"haralick_{prop}_d{d}" for d in distances for prop in HARALICK_PROPERTIES)
    return np.stack(columns, axis=1), names


# --------------------------------------------------------------------------------------
# Autoencoder baseline
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoencoderConfig:
    """The paper's autoencoder: PCI source encoder + PCI decoder, reconstructing the input.

    The decoder's first convolution reads only the 256 encoder channels (there is no
    target encoder), and its output has all P + M channels of the crop.
    """

    protein_channels: int = 1
    marker_channels: int = 1
    source_stages: tuple[tuple[int, ...], ...] = PCIConfig.source_stages
    decoder_stages: tuple[tuple[int, ...], ...] = PCIConfig.decoder_stages
    crop_size: int = 64
    feature_layer: str = "conv4"  # same rule as PCI (the paper reports the best layer)
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    lr: float = 1e-4  # trained like PCI [P: "trained on the same dataset"]
    betas: tuple[float, float] = (0.5, 0.999)
    epochs: int = 30
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check_encoder_config(self)
        if len(self.decoder_stages) != len(self.source_stages):
            raise ValueError(
                "decoder_stages must have as many stages as source_stages; got "
                f"{len(self.decoder_stages)} and {len(self.source_stages)}"
            )

    # Unannotated, so not dataclass fields: the same derived properties as PCIConfig.
    layer_names = PCIConfig.layer_names
    downsampling = PCIConfig.downsampling


@dataclass(frozen=True)
class RandomPCIConfig:
    """A PCI source encoder left at its Glorot-uniform initialisation (never trained)."""

    protein_channels: int = 1
    marker_channels: int = 1
    source_stages: tuple[tuple[int, ...], ...] = PCIConfig.source_stages
    crop_size: int = 64
    feature_layer: str = "conv4"
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    init_seed: int = 0  # the weights depend on this alone, not on the global torch seed

    def __post_init__(self) -> None:
        _check_encoder_config(self)

    # Unannotated, so not dataclass fields: the same derived properties as PCIConfig.
    layer_names = PCIConfig.layer_names
    downsampling = PCIConfig.downsampling


def _check_encoder_config(cfg: AutoencoderConfig | RandomPCIConfig) -> None:
    if cfg.protein_channels < 1 or cfg.marker_channels < 0:
        raise ValueError(
            "expected protein_channels >= 1 and marker_channels >= 0; got "
            f"{cfg.protein_channels} and {cfg.marker_channels}"
        )
    if cfg.feature_layer not in cfg.layer_names:
        raise ValueError(f"feature_layer must be one of {cfg.layer_names}; got {cfg.feature_layer!r}")
    if cfg.crop_size % cfg.downsampling:
        raise ValueError(f"crop_size must be divisible by {cfg.downsampling}; got {cfg.crop_size}")


class _PooledEncoderFeatures:
    """``features`` shared by the baselines: max-pooled pre-BN activations, as in PCI."""

    config: AutoencoderConfig | RandomPCIConfig
    encoder: PCIEncoder

    def features(
        self,
        batch_or_tensor: torch.Tensor | Mapping[str, torch.Tensor],
        *,
        layer: str | None = None,
    ) -> torch.Tensor:
        """Spatial max of one encoder layer's post-ReLU, pre-BN map; (B, D). Use ``eval()``.

        Parameters
        ----------
        batch_or_tensor : (B, P + M, H, W) Tensor or dict with ``"crops"``
        layer : str, optional
            ``"conv1"`` … ``"conv5"``; default ``config.feature_layer``.
        """
        x = crops_from(batch_or_tensor)
        c = self.config
        check_crops(x, c.protein_channels + c.marker_channels, c.downsampling, "crops")
        layer = layer or c.feature_layer
        return self.encoder.activations(x, last=layer)[layer].amax(dim=(-2, -1))  # (B, D)


class PCIAutoencoder(_PooledEncoderFeatures, nn.Module):
    """Autoencoder baseline of Lu et al. (2019): reconstruct the crop through the PCI layers.

    Batch keys for :meth:`compute_loss`: ``crops`` (B, P + M, H, W) float.
    """

    batch_keys: ClassVar[tuple[str, ...]] = ("crops",)
    requires_training: ClassVar[bool] = True

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.protein_channels + config.marker_channels
        self.encoder = PCIEncoder(
            channels, config.source_stages, bn_momentum=config.bn_momentum, bn_eps=config.bn_eps
        )
        self.decoder = PCIDecoder(self.encoder.out_channels, config.decoder_stages, channels)
        glorot_init(self)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, P + M, H, W) → reconstruction of the same shape."""
        c = self.config
        check_crops(crops, c.protein_channels + c.marker_channels, c.downsampling, "crops")
        return self.decoder(self.encoder(crops))  # (B, P + M, H, W)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pixel-wise MSE of the reconstruction; ``{"loss", "mse"}``."""
        crops = batch["crops"]
        mse = F.mse_loss(self(crops), crops)
        return {"loss": mse, "mse": mse.detach()}


class RandomPCIEncoder(_PooledEncoderFeatures, nn.Module):
    """Randomly initialised PCI source encoder: a control with no training.

    ``requires_training`` is False: the engine saves it as built. Its batch norms keep
    their initial running statistics (mean 0, variance 1), so in ``eval()`` mode each BN
    is a fixed rescaling by 1/sqrt(1 + eps). :meth:`compute_loss` returns a zero loss
    (there is no objective) so generic evaluation code can still call it.
    """

    batch_keys: ClassVar[tuple[str, ...]] = ("crops",)
    requires_training: ClassVar[bool] = False

    def __init__(self, config: RandomPCIConfig) -> None:
        super().__init__()
        self.config = config
        # A private random stream: the weights depend on init_seed alone, and building the
        # control leaves the caller's global stream untouched (layer construction draws too).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            self.encoder = PCIEncoder(
                config.protein_channels + config.marker_channels,
                config.source_stages,
                bn_momentum=config.bn_momentum,
                bn_eps=config.bn_eps,
            )
            glorot_init(self)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, P + M, H, W) → (B, 256, H / 4, W / 4) encoder output."""
        c = self.config
        check_crops(crops, c.protein_channels + c.marker_channels, c.downsampling, "crops")
        return self.encoder(crops)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """No objective: ``{"loss": 0}`` on the crops' device."""
        return {"loss": torch.zeros((), device=batch["crops"].device)}


_AE_CONFIGS: dict[str, AutoencoderConfig] = {
    "paper": AutoencoderConfig(),
    "tiny": AutoencoderConfig(
        source_stages=((16,), (32,), (48, 48, 32)),
        decoder_stages=((32, 48, 48), (32,), (16,)),
        crop_size=32,
        lr=1e-3,
        epochs=5,
        batch_size=32,
    ),
}
_RANDOM_CONFIGS: dict[str, RandomPCIConfig] = {
    "paper": RandomPCIConfig(),
    "tiny": RandomPCIConfig(source_stages=((16,), (32,), (48, 48, 32)), crop_size=32),
}


def _resolve(table: Mapping[str, Any], config: str, protein_channels: int,
             marker_channels: int, overrides: dict[str, Any]) -> Any:
    if config not in table:
        raise ValueError(f"unknown configuration {config!r}; expected one of {sorted(table)}")
    overrides.setdefault("feature_layer", default_feature_layer(marker_channels))
    return resolve_config(table[config], protein_channels=protein_channels,
                          marker_channels=marker_channels, **overrides)


@register_model("autoencoder")
def autoencoder(
    config: str = "paper", *, protein_channels: int = 1, marker_channels: int = 1, **overrides: Any
) -> PCIAutoencoder:
    """Autoencoder baseline with the PCI source encoder and decoder (``"paper"``/``"tiny"``)."""
    return PCIAutoencoder(_resolve(_AE_CONFIGS, config, protein_channels, marker_channels, overrides))


@register_model("pci_random")
def pci_random(
    config: str = "paper", *, protein_channels: int = 1, marker_channels: int = 1, **overrides: Any
) -> RandomPCIEncoder:
    """Randomly initialised PCI source encoder (``"paper"``/``"tiny"``); pass ``init_seed=``."""
    return RandomPCIEncoder(
        _resolve(_RANDOM_CONFIGS, config, protein_channels, marker_channels, overrides)
    )
