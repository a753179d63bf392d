"""MBConv building blocks of EfficientNet (Tan & Le 2019, ICML; Table 1).

Mobile inverted bottleneck: 1×1 expansion → k×k depthwise (stride s) → squeeze-and-
excitation → linear 1×1 projection, with an identity shortcut when shape allows. Swish
(SiLU) activations, batch norm after every convolution. Written here because torchvision
is not a dependency of cellrep.

Notes
-----
Batch norm uses the Keras defaults of the reference implementations (momentum 0.99, i.e.
PyTorch ``momentum=0.01``, ``eps=1e-3``). Stochastic depth (drop-connect) of the ImageNet
EfficientNet is not used: the cytoself paper does not mention it and its encoders are
shallow slices of B0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["MBConvRow", "ConvBNAct", "SqueezeExcitation", "MBConv", "mbconv_stages", "batch_norm"]


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with the Keras defaults of the reference code (momentum 0.99, eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


@dataclass(frozen=True)
class MBConvRow:
    """One stage of MBConv blocks: a row of EfficientNet's Table 1.

    Attributes
    ----------
    kernel : int
        Depthwise kernel size (3 or 5).
    repeats : int
        Number of blocks in the stage; only the first one strides.
    out_channels : int
        Output channels of every block of the stage.
    expand_ratio : int
        Expansion factor of the inverted bottleneck (1 or 6 in B0).
    stride : int
        Stride of the stage's first block (1 or 2).
    """

    kernel: int
    repeats: int
    out_channels: int
    expand_ratio: int
    stride: int


class ConvBNAct(nn.Sequential):
    """k×k convolution (no bias: BN's shift replaces it) → BN → optional SiLU (swish).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int, default 3
        Padded by ``kernel_size // 2`` ("same" size at stride 1, ``ceil(n / s)`` at stride s).
    stride : int, default 1
    groups : int, default 1
        ``in_channels`` makes it depthwise.
    activation : bool, default True
        False gives a linear conv–BN (the MBConv projection).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                      groups=groups, bias=False),
            batch_norm(out_channels),
        ]
        if activation:
            # Not in place: SiLU's backward needs its input, so an in-place SiLU makes
            # autograd clone the BN output, one extra pass over the largest maps.
            layers.append(nn.SiLU())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating of Hu et al. 2018 as used in EfficientNet: x · σ(W₂ swish(W₁ mean(x))).

    Parameters
    ----------
    channels : int
        Channels of the gated (expanded) map.
    squeeze_channels : int
        Bottleneck width (EfficientNet: ``se_ratio`` × the block's *input* channels).
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.expand(self.act(self.reduce(s)))  # (B, C, 1, 1)
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Mobile inverted bottleneck block with squeeze-and-excitation (EfficientNet, Sec. 4).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel : int
        Depthwise kernel size.
    stride : int
    expand_ratio : int
        Expanded width = ``in_channels · expand_ratio``; 1 skips the expansion conv.
    se_ratio : float, default 0.25
        Squeeze width = ``max(1, int(in_channels · se_ratio))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=1))
        layers.append(ConvBNAct(hidden, hidden, kernel_size=kernel, stride=stride, groups=hidden))
        if se_ratio > 0:
            layers.append(SqueezeExcitation(hidden, max(1, int(in_channels * se_ratio))))
        layers.append(ConvBNAct(hidden, out_channels, kernel_size=1, activation=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)  # (B, out, ceil(H/s), ceil(W/s))
        return out + x if self.use_residual else out


def mbconv_stages(
    rows: Sequence[MBConvRow], in_channels: int, se_ratio: float = 0.25
) -> tuple[nn.Sequential, int]:
    """Stack the stages described by ``rows`` (EfficientNet Table 1 layout).

    Parameters
    ----------
    rows : sequence of MBConvRow
    in_channels : int
        Channels entering the first stage.
    se_ratio : float, default 0.25

    Returns
    -------
    stages : nn.Sequential
        One ``nn.Sequential`` of MBConv blocks per row.
    out_channels : int
        Channels leaving the last stage.
    """
    stages = []
    channels = in_channels
    for row in rows:
        blocks = []
        for i in range(row.repeats):
            blocks.append(MBConv(channels, row.out_channels, row.kernel,
                                 row.stride if i == 0 else 1, row.expand_ratio, se_ratio))
            channels = row.out_channels
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), channels
