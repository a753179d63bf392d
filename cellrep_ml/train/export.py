"""The model as it is logged to MLflow: a feature extractor with tensor inputs.

``forward`` takes plain tensors and maps them to the batch keys the method's ``features``
reads, so the logged model has a tensor signature (what ``torch.export`` and MLflow
serving need) while the method keeps its dict-based API. ``torch.export`` needs named
positional parameters, hence one class per input arity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["ConditionalFeatureExtractor", "FeatureExtractor", "feature_extractor", "plain_copy"]


class FeatureExtractor(nn.Module):
    """``forward(x) -> model.features({key: x}, layer=layer)``, (B, D) float32.

    Parameters
    ----------
    model : nn.Module
        A trained cellrep model (``features`` method); use in eval mode.
    key : str
        Batch key of the input, e.g. ``"image"`` for cytoself, ``"source"`` for PCI.
    layer : str, optional
        Feature layer; the model's default when ``None``.

    Examples
    --------
    >>> fx = FeatureExtractor(model, "image").eval()  # doctest: +SKIP
    >>> fx(crops).shape                               # (B, D)
    """

    def __init__(self, model: nn.Module, key: str, layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, [Z,] H, W) crops → (B, D) features."""
        return self.model.features({self.key: x}, layer=self.layer).float()


class ConditionalFeatureExtractor(nn.Module):
    """Features of a model conditioned on a reference image and a label (cbvae structure).

    ``forward(x, reference, label)`` → ``model.features({keys[0]: x, keys[1]: reference,
    keys[2]: label})``.
    """

    def __init__(self, model: nn.Module, keys: Sequence[str], layer: str | None = None) -> None:
        super().__init__()
        if len(keys) != 3:
            raise ValueError(f"expected three batch keys (image, reference, label); got {keys}")
        self.model = model
        self.keys = tuple(keys)
        self.layer = layer

    def forward(self, x: torch.Tensor, reference: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B, C_t, …), (B, C_r, …), (B,) → (B, D) features."""
        batch = dict(zip(self.keys, (x, reference, label), strict=True))
        return self.model.features(batch, layer=self.layer).float()


def feature_extractor(model: nn.Module, keys: Sequence[str], layer: str | None = None) -> nn.Module:
    """The extractor class matching the number of inputs ``keys`` names."""
    if len(keys) == 1:
        return FeatureExtractor(model, keys[0], layer)
    return ConditionalFeatureExtractor(model, keys, layer)


def plain_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with parametrized weights baked in.

    Neither ``torch.export`` nor pickling handles parametrized modules (cbvae's spectral
    norm). In eval mode a parametrization is a fixed function of stored tensors, so
    replacing it by its current value (``leave_parametrized=True``) keeps every output.
    The copy is rebuilt from ``type(model)(model.config)`` and the state dict, because
    ``copy.deepcopy`` of a parametrized module corrupts the original.
    """
    from torch.nn.utils import parametrize

    copy = type(model)(model.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    copy.eval()
    for module in list(copy.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return copy
