"""2D UMAP embeddings with the settings of Kobayashi et al. 2021 (umap-learn defaults)."""

from __future__ import annotations

import warnings

import numpy as np

from cellrep_ml.errors import InputError
from cellrep_ml.evaluate._validation import check_matrix

__all__ = ["umap_embedding"]


def umap_embedding(
    features: np.ndarray,
    *,
    seed: int,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
) -> np.ndarray:
    """2D UMAP of feature vectors (Kobayashi et al. 2021, Fig. 2 and Methods "UMAP").

    Parameters
    ----------
    features : (N, D) ndarray
        Finite feature vectors (e.g. the flattened 9,216-d global VQ encoding).
    seed : int
        ``random_state`` of UMAP; with a seed umap-learn runs single-threaded and is
        reproducible on one machine.
    n_neighbors : int
        Local neighbourhood size; umap-learn's default 15, as in the paper.
        Must be smaller than ``N``.
    min_dist : float
        Minimum distance between embedded points; default 0.1.
    metric : str
        Input-space metric; Euclidean in the paper.

    Returns
    -------
    embedding : (N, 2) float64 ndarray

    References
    ----------
    Kobayashi, Cheveralls, Leonetti, Royer. bioRxiv 2021.03.29.437595; McInnes, Healy,
    Melville, arXiv:1802.03426 (UMAP).
    """
    x = check_matrix(features, "features", min_rows=3)
    if not 2 <= n_neighbors < x.shape[0]:
        raise InputError("n_neighbors out of range", expected=f"2 <= n_neighbors < {x.shape[0]}",
                         received=str(n_neighbors))
    import umap  # deferred: importing umap-learn compiles numba code (seconds)

    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist,
                        metric=metric, random_state=seed)
    with warnings.catch_warnings():
        # umap-learn warns that a random_state forces n_jobs = 1: that is the intent.
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)
