"""Batched inference: crops streamed from a crop store through ``model.features``.

The store is read one batch at a time (the next batch is read in a background thread
while the model works on the current one), so a screen never has to fit in memory.
How a method wants its input is the method's business; the small table
``_FEATURE_CALLS`` below holds the one exception to "pass the crops tensor".
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cellrep_ml.errors import InputError
from cellrep_ml.io.crop_store import CropStore

__all__ = ["PRECISIONS", "best_device", "embed_cells", "input_shape"]

#: ``float32``: exact and reproducible (the default). ``bfloat16``: autocast, ~2.5x
#: faster on CPUs with AVX512-BF16/AMX and on GPUs, features within ~0.5 % (relative L2)
#: of float32 — for large screens, opt in. 2D models run channels-last in both.
PRECISIONS = ("float32", "bfloat16")

log = logging.getLogger(__name__)


def best_device(preference: str | torch.device | None = None) -> torch.device:
    """``preference`` if given, else CUDA when available, else CPU."""
    if preference is not None:
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """Spatial input shape the model was built for, from its config; ``None`` if unstated.

    ``input_shape`` (cbvae, 2D or 3D), else ``crop_size`` (pci, locclf, baselines), else
    ``image_size`` (cytoself), the latter two square.
    """
    config = getattr(model, "config", None)
    if getattr(config, "input_shape", None) is not None:
        return tuple(int(s) for s in config.input_shape)
    for attr in ("crop_size", "image_size"):
        size = getattr(config, attr, None)
        if size is not None:
            return (int(size), int(size))
    return None


def _crops_features(model: nn.Module, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    return model.features(x, layer=layer)


def _cbvae_features(model: nn.Module, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    # Crops are [protein, *markers]; the reference model encodes the markers only
    # (cellrep_ml.train.tasks.CBVAETask.load_batch).
    if model.config.kind != "reference":
        raise InputError("cbvae structure models need per-cell structure ids to embed",
                         expected="a reference cbvae model", received=f"kind={model.config.kind!r}")
    return model.features(x[:, 1:].contiguous(), layer=layer)


#: Model class name → how to call ``features`` on a (B, C, ...) crops tensor whose
#: channels are in the order the model was trained on. Absent classes take the crops.
_FEATURE_CALLS: dict[str, Callable[[nn.Module, torch.Tensor, str | None], torch.Tensor]] = {
    "ConditionalBetaVAE": _cbvae_features,
}


def _channel_positions(store: CropStore, channels: Sequence[str] | None) -> np.ndarray | None:
    if channels is None:
        return None
    names = store.channel_names
    missing = [c for c in channels if c not in names]
    if missing:
        raise InputError(f"channels {missing} are not in the crop store", path=store.path,
                         expected=f"names among {names}", received=str(list(channels)))
    pos = np.array([names.index(c) for c in channels], dtype=np.int64)
    return None if np.array_equal(pos, np.arange(len(names))) else pos


def _to_tensor(x: np.ndarray, shape: tuple[int, ...] | None, device: torch.device,
               channels_last: bool) -> torch.Tensor:
    from cellrep_ml.train.tasks import to_float_tensor

    # Resize on the CPU exactly as training did, then move.
    t = to_float_tensor(x, shape)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(device, non_blocking=True)


def embed_cells(
    model: nn.Module,
    store: CropStore | str | Path,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    layer: str | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    channels: Sequence[str] | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> np.ndarray:
    """Features of every crop (or of ``indices``) of a crop store, in store order.

    The model is put in ``eval()`` mode (batch norm then uses its running statistics, so
    a cell's vector does not depend on its batch) and moved to ``device``; its training
    flag is restored afterwards. Crops are float16 in the store, float32 in the model,
    resized to the model's input shape when they differ (area averaging when shrinking,
    as in training).

    Parameters
    ----------
    model : nn.Module
        A cellrep model with ``features(batch_or_tensor, *, layer=None) -> (B, D)``.
    store : CropStore or path
        The crop store (``crops.zarr``).
    batch_size : int
        Crops per forward pass.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    layer : str, optional
        Passed to ``model.features`` (e.g. ``"conv3"`` for PCI, ``"local_histogram"``
        for cytoself); default the method's own choice.
    indices : (n,) array of int, optional
        Crops to embed, in this order; default all, in store order.
    channels : sequence of str, optional
        Store channels to feed, in model order (e.g. ``["GFP", "nucleus_distance"]``);
        default every channel of the store, in store order.
    precision : {"float32", "bfloat16"}
        ``bfloat16`` runs the model under autocast: about 2.5x the throughput on CPUs
        with bf16 instructions and on GPUs, at ~0.5 % relative error of the features.
        Outputs are float32 either way; 2D models run channels-last in both.
    progress : bool
        Show a progress bar with the throughput in cells/s.

    Returns
    -------
    (n, D) ndarray of float32

    Raises
    ------
    InputError
        If a channel is not in the store, or the model cannot embed bare crops.
    ValueError
        If ``batch_size`` < 1 or ``precision`` is unknown.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if not isinstance(store, CropStore):
        store = CropStore.open(store)
    n_store = len(store)
    rows = None if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    n = n_store if rows is None else rows.size
    pos = _channel_positions(store, channels)
    dev = best_device(device)
    shape = input_shape(model)
    call = _FEATURE_CALLS.get(type(model).__name__, _crops_features)
    low = precision == "bfloat16"
    # oneDNN (CPU) and cuDNN convolutions are faster channels-last, float32 included (2
    # cores, paper models: PCI ~1.35x, cytoself ~1.4x, DeepLoc ~1.15x); the model's
    # layout is restored afterwards.
    channels_last = shape is not None and len(shape) == 2
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if low
                else contextlib.nullcontext())

    def read(start: int) -> np.ndarray:
        stop = min(start + batch_size, n)
        x = store[slice(start, stop)] if rows is None else store[rows[start:stop]]
        return x if pos is None else x[:, pos]

    was_training = model.training
    model.eval().to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    out: np.ndarray | None = None
    bar = tqdm(total=n, unit="cell", disable=not progress, desc="embed", smoothing=0.1)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), autocast, ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, 0) if n else None
            for start in range(0, n, batch_size):
                crops = pending.result()
                nxt = start + batch_size
                pending = pool.submit(read, nxt) if nxt < n else None
                feats = call(model, _to_tensor(crops, shape, dev, channels_last), layer)  # (B, D)
                feats = feats.detach().float().flatten(1).cpu().numpy()
                if out is None:
                    out = np.empty((n, feats.shape[1]), np.float32)
                out[start:start + len(feats)] = feats
                bar.update(len(feats))
    finally:
        bar.close()
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - t0
    if out is None:  # nothing to embed: learn D from one crop so callers get (0, D)
        if n_store == 0:
            raise InputError("the crop store is empty; nothing to embed", path=store.path)
        probe = embed_cells(model, store, batch_size=1, device=dev, layer=layer,
                            indices=[0], channels=channels, precision=precision)
        return probe[:0]
    log.info("embedded %d cells in %.2f s (%.0f cells/s) on %s, %s", n, seconds,
             n / max(seconds, 1e-9), dev, precision)
    return out
