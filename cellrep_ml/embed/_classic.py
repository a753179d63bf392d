"""Features of the untrained baselines, computed over a whole crop store.

Lu et al. (2019, Fig. 2) compare PCI with classic computer-vision features and with a
randomly initialised encoder; :func:`classic_embeddings` streams a crop store through
:func:`cellrep_ml.models.baselines.classic_features` in batches (memory flat in the
number of cells), in store order, like :func:`cellrep_ml.embed.embed_cells` does for
models. Only 2D crops: the Haralick texture of the paper is defined on planes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellrep_ml.errors import InputError
from cellrep_ml.io.crop_store import CropStore

__all__ = ["classic_embeddings"]


def classic_embeddings(
    store: CropStore | str | Path,
    *,
    protein: str,
    markers: Sequence[str],
    batch_size: int = 512,
) -> tuple[np.ndarray, list[str]]:
    """Classic features of every crop of a store, float32, in store order.

    Parameters
    ----------
    store : CropStore or path
    protein : str
        Name of the tagged-protein channel.
    markers : sequence of str
        Channels the protein is correlated with (nucleus, other markers).
    batch_size : int
        Crops per batch.

    Returns
    -------
    features : (n, D) float32 ndarray
    names : list of str
        Feature names (see ``classic_features``).

    Raises
    ------
    InputError
        If a channel is not in the store, or the crops are not 2D.
    """
    from cellrep_ml.models.baselines import classic_features

    if not isinstance(store, CropStore):
        store = CropStore.open(store)
    names = list(store.channel_names)
    missing = [c for c in (protein, *markers) if c not in names]
    if missing:
        raise InputError(f"channels {missing} are not in the crop store", path=store.path,
                         expected=f"names among {names}")
    if len(store.shape) != 4:
        raise InputError("classic features need 2D crops", path=store.path,
                         expected="(N, C, H, W) crops", received=f"store shape {store.shape}")
    protein_channel = names.index(protein)
    marker_channels = [names.index(m) for m in markers]
    n = len(store)
    out, feature_names = None, []
    for start in range(0, n, batch_size):
        crops = store[slice(start, min(start + batch_size, n))]
        feats, feature_names = classic_features(crops, protein_channel=protein_channel,
                                                marker_channels=marker_channels,
                                                channel_names=names)
        if out is None:
            out = np.empty((n, feats.shape[1]), np.float32)
        out[start:start + len(feats)] = feats
    if out is None:
        raise InputError("the crop store is empty; nothing to embed", path=store.path)
    return out, feature_names
