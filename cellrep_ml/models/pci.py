"""Paired cell inpainting (Lu, Kraus, Cooper & Moses, PLoS Comput Biol 15(9): e1007348, 2019).

A source-cell encoder reads one cell (protein + marker channels); a target-marker encoder
reads the marker channels of *another* cell of the same image; a decoder predicts the
target cell's protein channel(s) from both. The pretext task forces the source encoder to
describe where the protein sits relative to the cell's structures, and its max-pooled
activations are the single-cell features the paper evaluates.

Layers follow the authors' released code (as summarised in the team's implementation notes):
every convolution is 3×3, stride 1, same padding, **ReLU then batch norm** (Keras order);
the decoder has no batch norm; no fully connected layers, skips or dropout. Parameter
counts (trainable) match the code exactly: 7,320,609 for yeast (1 protein + 1 marker) and
7,321,617 for human (1 protein + 2 markers: nucleus, microtubules).

Departures from the paper
-------------------------
- Keras batch norm (momentum 0.99, eps 1e-3) is written as PyTorch momentum 0.01, eps 1e-3.
- The network is fully convolutional, so any crop whose side is divisible by 4 works;
  ``crop_size`` in the config only tells the data pipeline what the paper used.
- Not a departure, an implementation note: each decoder upsampling and the convolution
  after it are computed as one sub-pixel convolution (:func:`upsample2x_conv3x3`), the
  same function with ~2× fewer operations for the two largest layers (PCI paper training
  on 2 CPU cores: 26 % fewer multiply-adds per step).

Examples
--------
>>> from cellrep_ml.models import build
>>> model = build("pci", "paper", protein_channels=1, marker_channels=1)  # yeast
>>> sum(p.numel() for p in model.parameters() if p.requires_grad)
7320609
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from cellrep_ml.models._registry import register_model

__all__ = [
    "PCIConfig",
    "PCIEncoder",
    "PCIDecoder",
    "PairedCellInpainting",
    "glorot_init",
    "pci",
    "upsample2x_conv3x3",
]


@dataclass(frozen=True)
class PCIConfig:
    """One row of the architecture and training table of Lu et al. (2019).

    Stages are tuples of convolution widths; the encoders max-pool 2×2 *between* stages
    and the decoder upsamples ×2 (nearest) between its stages, so the three stage tuples
    must have the same length (64 → 32 → 16 and back).
    """

    protein_channels: int = 1
    marker_channels: int = 1  # the nucleus counts as a marker
    # Source encoder: conv1 96 | pool | conv2 256 | pool | conv3 384, conv4 384, conv5 256.
    source_stages: tuple[tuple[int, ...], ...] = ((96,), (256,), (384, 384, 256))
    # Target-marker encoder: 16 | pool | 32 | pool | 32.
    target_stages: tuple[tuple[int, ...], ...] = ((16,), (32,), (32,))
    # Decoder (no BN): 256, 384, 384 at 16×16 | up | 256 at 32×32 | up | 96 at 64×64.
    decoder_stages: tuple[tuple[int, ...], ...] = ((256, 384, 384), (256,), (96,))
    crop_size: int = 64  # yeast 64×64 crops; human 512×512 rescaled to 64×64
    feature_layer: str = "conv4"  # conv4 for yeast (Table 1); the builder picks conv3 for human
    bn_momentum: float = 0.01  # Keras momentum 0.99
    bn_eps: float = 1e-3  # Keras default
    lr: float = 1e-4  # Adam, no schedule [code]
    betas: tuple[float, float] = (0.5, 0.999)  # β1 = 0.5 [code]
    epochs: int = 30
    batch_size: int = 64  # yeast [code]; steps per epoch = n_cells // batch_size

    def __post_init__(self) -> None:
        if self.protein_channels < 1 or self.marker_channels < 1:
            raise ValueError(
                "PCI needs at least one protein and one marker channel (the target cell is "
                f"described by its markers); got protein_channels={self.protein_channels}, "
                f"marker_channels={self.marker_channels}"
            )
        lengths = {len(self.source_stages), len(self.target_stages), len(self.decoder_stages)}
        if len(lengths) != 1:
            raise ValueError(
                "source_stages, target_stages and decoder_stages must have the same number of "
                "stages (each pooling step is undone by one upsampling step); got "
                f"{len(self.source_stages)}, {len(self.target_stages)}, {len(self.decoder_stages)}"
            )
        if self.crop_size % self.downsampling:
            raise ValueError(
                f"crop_size must be divisible by {self.downsampling} (2 per pooling step); "
                f"got {self.crop_size}"
            )
        if self.feature_layer not in self.layer_names:
            raise ValueError(
                f"feature_layer must be one of {self.layer_names}; got {self.feature_layer!r}"
            )

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the source-encoder convolutions, ``("conv1", ..., "convN")``."""
        n = sum(len(stage) for stage in self.source_stages)
        return tuple(f"conv{i + 1}" for i in range(n))

    @property
    def downsampling(self) -> int:
        """Total spatial reduction of the encoders (4 for the paper's two pools)."""
        return 2 ** (len(self.source_stages) - 1)


# Table: the paper's network and a narrow copy of it for CPU tests and demos.
_CONFIGS: dict[str, PCIConfig] = {
    "paper": PCIConfig(),
    "tiny": PCIConfig(
        source_stages=((16,), (32,), (48, 48, 32)),
        target_stages=((8,), (16,), (16,)),
        decoder_stages=((32, 48, 48), (32,), (16,)),
        crop_size=32,
        lr=1e-3,  # a small network on few cells: a larger step converges within a demo
        epochs=5,
        batch_size=32,
    ),
}


def default_feature_layer(marker_channels: int) -> str:
    """The layer the paper evaluates: ``conv4`` for yeast (one marker), ``conv3`` for human."""
    return "conv4" if marker_channels == 1 else "conv3"


def resolve_config(base: Any, **fields: Any) -> Any:
    """``dataclasses.replace`` whose error names the accepted fields."""
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(
            f"unknown {type(base).__name__} field(s) {unknown}; expected some of {sorted(names)}"
        )
    # JSON round trips turn tuples into lists; keep the frozen config hashable.
    fields = {k: _as_tuple(v) for k, v in fields.items()}
    return dataclasses.replace(base, **fields)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv/linear layer (Keras defaults)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvReLUBN(nn.Module):
    """3×3 same convolution → ReLU → batch norm, the order of the authors' Keras code."""

    def __init__(self, in_channels: int, out_channels: int, *, momentum: float, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        # In place: the convolution's backward does not need its output, so the ReLU can
        # overwrite it (one activation map fewer to allocate and write per block).
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(out_channels, momentum=momentum, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(after BN, after ReLU before BN)``; the second is what features pool."""
        act = self.relu(self.conv(x))  # (B, C_out, H, W)
        return self.bn(act), act

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Post-ReLU, pre-BN map alone: the last layer of a feature query needs no BN."""
        return self.relu(self.conv(x))  # (B, C_out, H, W)


class PCIEncoder(nn.Module):
    """Stages of :class:`ConvReLUBN` blocks with 2×2 max-pooling between stages.

    Parameters
    ----------
    in_channels : int
        Input channels (source: protein + markers; target: markers).
    stages : tuple of tuple of int
        Convolution widths per stage.
    bn_momentum, bn_eps : float
        PyTorch batch-norm settings.
    """

    def __init__(
        self,
        in_channels: int,
        stages: tuple[tuple[int, ...], ...],
        *,
        bn_momentum: float,
        bn_eps: float,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        pool_after: list[bool] = []
        width = in_channels
        for s, stage in enumerate(stages):
            for k, out in enumerate(stage):
                blocks.append(ConvReLUBN(width, out, momentum=bn_momentum, eps=bn_eps))
                # Pool after the last conv of every stage but the last.
                pool_after.append(k == len(stage) - 1 and s < len(stages) - 1)
                width = out
        self.blocks = nn.ModuleList(blocks)
        self.pool_after = tuple(pool_after)
        self.pool = nn.MaxPool2d(2)
        self.out_channels = width

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(f"conv{i + 1}" for i in range(len(self.blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_out, H / 4, W / 4) for the paper's three stages."""
        for block, pool in zip(self.blocks, self.pool_after, strict=True):
            x, _ = block(x)
            if pool:
                x = self.pool(x)
        return x

    def activations(self, x: torch.Tensor, *, last: str | None = None) -> dict[str, torch.Tensor]:
        """Post-ReLU, pre-BN activation maps of ``conv1`` up to ``last`` (default: all).

        Parameters
        ----------
        x : (B, C_in, H, W) Tensor
        last : str, optional
            Stop after this layer; later layers are not computed.

        Returns
        -------
        dict of str to (B, C_k, H_k, W_k) Tensor
            In layer order; e.g. for 64×64 input conv1 is 64×64, conv2 32×32, conv3–5 16×16.
        """
        names = self.layer_names
        if last is not None and last not in names:
            raise ValueError(f"unknown layer {last!r}; expected one of {names}")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, block, pool in zip(names, self.blocks, self.pool_after, strict=True):
            if name == last:
                out[name] = block.activation(x)
                break
            x, out[name] = block(x)
            if pool:
                x = self.pool(x)
        return out


def _fold_taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 2-tap kernels a 3-tap kernel becomes along ``dim`` after ×2 nearest upsampling.

    Output position ``2i`` reads upsampled positions ``2i-1, 2i, 2i+1`` = source pixels
    ``i-1, i, i``: taps ``(w0, w1 + w2)`` on ``(i-1, i)``. Position ``2i+1`` reads
    ``i, i, i+1``: taps ``(w0 + w1, w2)`` on ``(i, i+1)``.
    """
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                       ) -> torch.Tensor:
    """``conv3x3(nearest_upsample_x2(x))`` (same padding) without the upsampled tensor.

    The same function as ``F.conv2d(F.interpolate(x, scale_factor=2), weight, bias,
    padding=1)`` up to float rounding, computed as one 2×2 convolution of ``x`` into the
    four output phases (sub-pixel convolution): 16 instead of 36 multiply-adds per input
    pixel and channel pair, and no ×4 upsampled map to write, read and backpropagate.

    Parameters
    ----------
    x : (B, C, H, W) Tensor
    weight : (O, C, 3, 3) Tensor
    bias : (O,) Tensor or None

    Returns
    -------
    (B, O, 2H, 2W) Tensor, channels-last
    """
    b, _, h, w = x.shape
    o = weight.shape[0]
    rows = _fold_taps(weight, 2)  # 2 × (O, C, 2, 3)
    # Kernel of output phase (a, c) = row phase a, column phase c; channel order (a, c, o).
    kernel = torch.cat([k for r in rows for k in _fold_taps(r, 3)])  # (4O, C, 2, 2)
    kernel = kernel.contiguous(memory_format=torch.channels_last)
    # Padding 1 gives (H+1, W+1) windows: phase a reads windows a .. a + H - 1.
    y = F.conv2d(x, kernel, None if bias is None else bias.repeat(4), padding=1)
    y = y.contiguous(memory_format=torch.channels_last)  # (B, 4O, H+1, W+1), NHWC in memory
    # In NHWC memory, out[n, 2i+a, 2j+c, :] = y[n, i+a, j+c, (2a+c)·O : (2a+c+1)·O]: an
    # affine function of (i, a, j, c, o), hence a strided view; one copy interleaves it.
    sb, _, sh, sw = y.stride()
    phases = y.as_strided((b, h, 2, w, 2, o), (sb, sh, sh + 2 * o, sw, sw + o, 1))
    return phases.reshape(b, 2 * h, 2 * w, o).permute(0, 3, 1, 2)  # (B, O, 2H, 2W)


class PCIDecoder(nn.Module):
    """Conv + ReLU stages (no BN), nearest ×2 upsampling between stages, linear 1×1 output.

    Each upsampling and the convolution after it run fused (:func:`upsample2x_conv3x3`):
    the same function, ~2× fewer operations for the decoder's two largest layers. The
    modules (and so the state dict) are those of the plain ``nn.Sequential``.
    """

    def __init__(
        self, in_channels: int, stages: tuple[tuple[int, ...], ...], out_channels: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for s, stage in enumerate(stages):
            if s > 0:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            for out in stage:
                # In place: the next convolution's backward needs its input, not the
                # pre-ReLU values, so the ReLU can overwrite the convolution's output.
                layers += [nn.Conv2d(width, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                width = out
        # Linear output: crops are min–max scaled, and the paper regresses them directly.
        layers.append(nn.Conv2d(width, out_channels, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C_z, H / 4, W / 4) → (B, out_channels, H, W)."""
        layers = list(self.layers)
        x, i = z, 0
        while i < len(layers):
            if isinstance(layers[i], nn.Upsample):  # an upsampling is always followed by a conv
                conv = layers[i + 1]
                x, i = upsample2x_conv3x3(x, conv.weight, conv.bias), i + 2
            else:
                x, i = layers[i](x), i + 1
        return x


def crops_from(batch_or_tensor: torch.Tensor | Mapping[str, torch.Tensor],
               keys: tuple[str, ...] = ("crops", "source")) -> torch.Tensor:
    """The crop tensor of a batch: the tensor itself, or the first of ``keys`` present."""
    if isinstance(batch_or_tensor, torch.Tensor):
        return batch_or_tensor
    for key in keys:
        if key in batch_or_tensor:
            return batch_or_tensor[key]
    raise KeyError(f"batch has none of the keys {keys}; got {sorted(batch_or_tensor)}")


def check_crops(x: torch.Tensor, channels: int, multiple: int, what: str) -> None:
    """Validate a (B, C, H, W) float crop tensor once, at the model boundary."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what}: expected (B, {channels}, H, W); got {tuple(x.shape)}")
    if x.shape[-1] % multiple or x.shape[-2] % multiple:
        raise ValueError(
            f"{what}: height and width must be divisible by {multiple}; got {tuple(x.shape[-2:])}"
        )


class PairedCellInpainting(nn.Module):
    """Paired cell inpainting network (Lu et al. 2019, Fig 1).

    Parameters
    ----------
    config : PCIConfig

    Notes
    -----
    Batch keys for :meth:`compute_loss`:

    - ``source`` : (B, P + M, H, W) float
      Source cell crops, protein channel(s) first, then markers (flips already applied).
    - ``target`` : (B, P + M, H, W) float
      Crops of another cell of the same image (see :mod:`cellrep_ml.models.pairing`);
      the model sees only its markers ``target[:, P:]`` and predicts ``target[:, :P]``.
    """

    batch_keys: ClassVar[tuple[str, ...]] = ("source", "target")
    requires_training: ClassVar[bool] = True

    def __init__(self, config: PCIConfig) -> None:
        super().__init__()
        self.config = config
        p, m = config.protein_channels, config.marker_channels
        bn = {"bn_momentum": config.bn_momentum, "bn_eps": config.bn_eps}
        self.source_encoder = PCIEncoder(p + m, config.source_stages, **bn)
        self.target_encoder = PCIEncoder(m, config.target_stages, **bn)
        self.decoder = PCIDecoder(
            self.source_encoder.out_channels + self.target_encoder.out_channels,
            config.decoder_stages,
            p,
        )
        glorot_init(self)

    def forward(self, source: torch.Tensor, target_markers: torch.Tensor) -> torch.Tensor:
        """Predict the target cell's protein channel(s).

        Parameters
        ----------
        source : (B, P + M, H, W) Tensor
        target_markers : (B, M, H, W) Tensor

        Returns
        -------
        (B, P, H, W) Tensor
        """
        c = self.config
        check_crops(source, c.protein_channels + c.marker_channels, c.downsampling, "source")
        check_crops(target_markers, c.marker_channels, c.downsampling, "target markers")
        zs = self.source_encoder(source)  # (B, 256, H/4, W/4)
        zt = self.target_encoder(target_markers)  # (B, 32, H/4, W/4)
        return self.decoder(torch.cat([zs, zt], dim=1))  # (B, P, H, W)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pixel-wise MSE between predicted and real target protein; ``{"loss", "mse"}``."""
        p = self.config.protein_channels
        target = batch["target"]
        pred = self(batch["source"], target[:, p:])  # (B, P, H, W)
        mse = F.mse_loss(pred, target[:, :p])
        return {"loss": mse, "mse": mse.detach()}

    def features(
        self,
        batch_or_tensor: torch.Tensor | Mapping[str, torch.Tensor],
        *,
        layer: str | None = None,
    ) -> torch.Tensor:
        """Spatially max-pooled post-ReLU, pre-BN activations of one source-encoder layer.

        Put the model in ``eval()`` mode first: earlier layers' batch norms then use their
        running statistics, so a cell's features do not depend on its batch.

        Parameters
        ----------
        batch_or_tensor : (B, P + M, H, W) Tensor or dict
            Crops, or a batch holding them under ``"crops"`` (or ``"source"``).
        layer : str, optional
            ``"conv1"`` … ``"conv5"``; default ``config.feature_layer``.

        Returns
        -------
        (B, D) Tensor
            D = 96 / 256 / 384 / 384 / 256 for conv1–conv5 of the paper configuration.
        """
        x = crops_from(batch_or_tensor)
        c = self.config
        check_crops(x, c.protein_channels + c.marker_channels, c.downsampling, "crops")
        layer = layer or c.feature_layer
        act = self.source_encoder.activations(x, last=layer)[layer]  # (B, D, h, w)
        return act.amax(dim=(-2, -1))  # (B, D)


@register_model("pci")
def pci(
    config: str = "paper",
    *,
    protein_channels: int = 1,
    marker_channels: int = 1,
    **overrides: Any,
) -> PairedCellInpainting:
    """Paired cell inpainting in configuration ``"paper"`` or ``"tiny"``.

    The feature layer defaults to the paper's choice for the screen: ``conv4`` with one
    marker (yeast), ``conv3`` otherwise (human); pass ``feature_layer=`` to override.
    """
    if config not in _CONFIGS:
        raise ValueError(f"unknown PCI configuration {config!r}; expected one of {sorted(_CONFIGS)}")
    overrides.setdefault("feature_layer", default_feature_layer(marker_channels))
    cfg = resolve_config(
        _CONFIGS[config],
        protein_channels=protein_channels,
        marker_channels=marker_channels,
        **overrides,
    )
    return PairedCellInpainting(cfg)
