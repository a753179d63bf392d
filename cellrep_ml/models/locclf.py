"""Localization-classifier features (Razdaibiedina & Brechalov, ICLR 2022 MLDD workshop).

A DeepLoc network (Kraus et al., Mol Syst Biol 2017) trained to classify each cell's
protein-level localization class; the 512-d activations of its last hidden layer are the
cell's representation, and a protein's vector is the mean over its test cells.

Architecture: eight 3×3 convolutions, each conv → BN → ReLU:
64, 64 | max-pool | 128, 128 | max-pool | 256, 256, 256, 256 | max-pool; then
FC 512 → ReLU → FC 512 → ReLU (the features) → FC n_classes.

Padding choice
--------------
Original DeepLoc uses *same* padding and trains on random 60×60 crops of 64×64 cells
(TensorFlow ``SAME`` pooling rounds up: 60 → 30 → 15 → 8), so its first FC layer reads
8·8·256 = 16,384 values. The authors' re-implementation uses *valid* padding on 64×64
(64 → 62 → 60 → 30 → 28 → 26 → 13 → 11 → 9 → 7 → 5 → 2; 2·2·256 = 1,024 values).
cellrep's ``paper`` configuration uses **same** padding with round-up pooling on the full
64×64 crop (64 → 32 → 16 → 8, the same 8·8·256 = 16,384 as DeepLoc): the workshop paper
names DeepLoc as its model, and a 2×2 map before the FC layers throws away most spatial
detail. Any input from 57 to 64 px gives the 8×8 map, so DeepLoc-style 60×60 random crops
also fit. ``padding="valid"`` builds the re-implementation's variant.

Parameter count of the ``paper`` configuration (2 input channels, 17 classes): 10,986,897
trainable (convolutions have no bias: the following batch norm's shift makes it redundant).

Examples
--------
>>> from cellrep_ml.models import build
>>> model = build("locclf", "paper", protein_channels=1, marker_channels=1, n_classes=17)
>>> sum(p.numel() for p in model.parameters())
10986897
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from cellrep_ml.models._registry import register_model
from cellrep_ml.models.pci import crops_from, glorot_init, resolve_config

__all__ = [
    "LocClfConfig",
    "LocalizationClassifier",
    "augment",
    "standardize",
    "locclf",
]


@dataclass(frozen=True)
class LocClfConfig:
    """One row of the DeepLoc / Razdaibiedina & Brechalov (2022) training table."""

    protein_channels: int = 1
    marker_channels: int = 1  # yeast: the cytoplasmic red channel
    n_classes: int = 17  # the 17 yeast localization categories of the paper
    conv_stages: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256, 256))
    fc_widths: tuple[int, ...] = (512, 512)  # the last one is the feature layer
    padding: Literal["same", "valid"] = "same"  # see the module docstring
    crop_size: int = 64
    standardize: bool = True  # per crop, per channel: mean 0, variance 1 (done in forward)
    augment_flips: bool = True  # random flips [P]
    augment_rotations: bool = True  # random 90° rotations [P]
    lr_grid: tuple[float, ...] = (1e-3, 6e-4, 3e-4, 1e-4, 5e-5)  # one model per rate [P]
    lr: float = 1e-3  # used when the engine does not search the grid
    # [P]: keep the checkpoint with minimal validation loss over the 30 epochs; patience
    # equal to the epoch count reproduces that, a smaller value stops sooner.
    patience: int = 30
    epochs: int = 30
    seeds: int = 3  # three runs per model [P]
    batch_size: int = 128  # DeepLoc's batch size; the workshop paper does not state one
    bn_momentum: float = 0.1  # PyTorch defaults; the papers do not state theirs
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.protein_channels < 1 or self.marker_channels < 0:
            raise ValueError(
                "expected protein_channels >= 1 and marker_channels >= 0; got "
                f"{self.protein_channels} and {self.marker_channels}"
            )
        if not self.fc_widths:
            raise ValueError("fc_widths needs at least one hidden layer (the features)")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2; got {self.n_classes}")
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid'; got {self.padding!r}")
        if self.feature_map_size(self.crop_size) < 1:
            raise ValueError(f"crop_size {self.crop_size} is too small for {self.padding} padding")

    @property
    def in_channels(self) -> int:
        return self.protein_channels + self.marker_channels

    def feature_map_size(self, side: int) -> int:
        """Side of the last conv stage's pooled map for a ``side``-pixel input."""
        for stage in self.conv_stages:
            if self.padding == "valid":
                side -= 2 * len(stage)
            # TensorFlow "SAME" pooling rounds up; valid (PyTorch) pooling rounds down.
            side = math.ceil(side / 2) if self.padding == "same" else side // 2
        return side


# Table: the paper's network and a narrow copy for CPU tests and demos.
_CONFIGS: dict[str, LocClfConfig] = {
    "paper": LocClfConfig(),
    "tiny": LocClfConfig(
        conv_stages=((8, 8), (16, 16), (32, 32, 32, 32)),
        fc_widths=(64, 64),
        crop_size=32,
        lr_grid=(1e-3, 3e-4),
        epochs=5,
        patience=3,
        seeds=1,
        batch_size=32,
    ),
}


def standardize(crops: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-crop, per-channel standardisation to mean 0 and variance 1.

    Parameters
    ----------
    crops : (B, C, H, W) Tensor
    eps : float
        Floor on the standard deviation; a constant channel becomes all zeros.

    Returns
    -------
    (B, C, H, W) Tensor
        Population (biased) variance 1 for every non-constant channel of every crop.
    """
    mean = crops.mean(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    std = crops.std(dim=(-2, -1), keepdim=True, correction=0)  # (B, C, 1, 1)
    return (crops - mean) / std.clamp_min(eps)


def augment(
    batch: torch.Tensor | Mapping[str, torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    flips: bool = True,
    rotations: bool = True,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Random flip and 90° rotation per crop (the dihedral group of the square).

    Parameters
    ----------
    batch : (B, C, H, W) Tensor, or dict with such a tensor under ``"crops"``
        Square crops; all channels of a crop get the same transform.
    generator : torch.Generator, optional
        Source of randomness (CPU generator); fix its seed for reproducible epochs.
    flips, rotations : bool
        Draw a horizontal flip with probability 1/2; a rotation by k·90°, k uniform in 0–3.

    Returns
    -------
    Tensor or dict
        The same kind as ``batch``; a dict is copied with only ``"crops"`` replaced.
    """
    x = crops_from(batch, ("crops",))
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"augment expects square crops (B, C, H, H); got {tuple(x.shape)}")
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5 if flips else torch.zeros(b, dtype=torch.bool)
    k = torch.randint(0, 4, (b,), generator=generator) if rotations else torch.zeros(b, dtype=torch.long)
    flip, k = flip.to(x.device), k.to(x.device)
    out = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    # rot90 has no per-sample angle: apply each of the four rotations to its subset.
    rotated = out.clone()
    for turns in (1, 2, 3):
        idx = (k == turns).nonzero(as_tuple=True)[0]
        if idx.numel():
            rotated[idx] = torch.rot90(out[idx], turns, dims=(-2, -1))
    if isinstance(batch, torch.Tensor):
        return rotated
    return {**batch, "crops": rotated}


class LocalizationClassifier(nn.Module):
    """DeepLoc localization classifier whose penultimate layer gives cell features.

    Parameters
    ----------
    config : LocClfConfig

    Notes
    -----
    Batch keys for :meth:`compute_loss`:

    - ``crops`` : (B, P + M, H, W) float
      Raw crops (standardised inside :meth:`forward` when ``config.standardize``).
    - ``label`` : (B,) int64
      Localization class of the crop's protein, in ``[0, n_classes)``.
    """

    batch_keys: ClassVar[tuple[str, ...]] = ("crops", "label")
    requires_training: ClassVar[bool] = True

    def __init__(self, config: LocClfConfig) -> None:
        super().__init__()
        self.config = config
        pad = 1 if config.padding == "same" else 0
        layers: list[nn.Module] = []
        width = config.in_channels
        for stage in config.conv_stages:
            for out in stage:
                layers += [
                    nn.Conv2d(width, out, kernel_size=3, padding=pad, bias=False),
                    nn.BatchNorm2d(out, momentum=config.bn_momentum, eps=config.bn_eps),
                    nn.ReLU(),
                ]
                width = out
            layers.append(nn.MaxPool2d(2, ceil_mode=config.padding == "same"))
        self.conv = nn.Sequential(*layers)
        self.map_size = config.feature_map_size(config.crop_size)
        fcs: list[nn.Module] = []
        n_in = width * self.map_size**2
        for n_out in config.fc_widths:
            fcs += [nn.Linear(n_in, n_out), nn.ReLU()]
            n_in = n_out
        self.hidden = nn.Sequential(*fcs)
        self.head = nn.Linear(n_in, config.n_classes)
        # Glorot uniform: the Keras/TensorFlow default that DeepLoc's code inherits.
        glorot_init(self)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected crops (B, {c.in_channels}, H, W); got {tuple(x.shape)}")
        sides = {c.feature_map_size(s) for s in x.shape[-2:]}
        if sides != {self.map_size}:
            raise ValueError(
                f"crops of {tuple(x.shape[-2:])} px give a {sorted(sides)} map but the FC "
                f"layers expect {self.map_size}×{self.map_size} (built for {c.crop_size} px)"
            )

    def embed(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(fc1 activations, fc2 activations)``, both (B, 512) after ReLU."""
        self._check(crops)
        x = standardize(crops) if self.config.standardize else crops
        x = self.conv(x).flatten(1)  # (B, 256 · 8 · 8)
        acts = []
        for layer in self.hidden:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                acts.append(x)  # (B, 512)
        return acts[0], acts[-1]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, P + M, H, W) crops → (B, n_classes) logits."""
        return self.head(self.embed(crops)[1])

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy on localization classes; ``{"loss", "cross_entropy"}``."""
        ce = F.cross_entropy(self(batch["crops"]), batch["label"])
        return {"loss": ce, "cross_entropy": ce.detach()}

    def augment(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Training augmentation with the config's flags (see :func:`augment`)."""
        return augment(
            batch,
            generator,
            flips=self.config.augment_flips,
            rotations=self.config.augment_rotations,
        )

    def features(
        self,
        batch_or_tensor: torch.Tensor | Mapping[str, torch.Tensor],
        *,
        layer: str | None = None,
    ) -> torch.Tensor:
        """Last hidden layer (``"fc2"``, default, 512-d after ReLU) or ``"fc1"``; (B, 512).

        Call in ``eval()`` mode so batch norm uses running statistics.
        """
        layer = layer or "fc2"
        if layer not in ("fc1", "fc2"):
            raise ValueError(f"unknown layer {layer!r}; expected 'fc1' or 'fc2'")
        fc1, fc2 = self.embed(crops_from(batch_or_tensor, ("crops",)))
        return fc2 if layer == "fc2" else fc1


@register_model("locclf")
def locclf(
    config: str = "paper",
    *,
    protein_channels: int = 1,
    marker_channels: int = 1,
    **overrides: Any,
) -> LocalizationClassifier:
    """DeepLoc localization classifier in configuration ``"paper"`` or ``"tiny"``.

    Pass ``n_classes=`` for the screen's number of localization classes (default 17).
    """
    if config not in _CONFIGS:
        raise ValueError(f"unknown locclf configuration {config!r}; expected one of {sorted(_CONFIGS)}")
    cfg = resolve_config(
        _CONFIGS[config],
        protein_channels=protein_channels,
        marker_channels=marker_channels,
        **overrides,
    )
    return LocalizationClassifier(cfg)
