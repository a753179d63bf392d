"""Hierarchical clustering of protein profiles, cut at several levels, for GO enrichment.

Proteins are clustered by their mean profiles with average linkage on the correlation
distance ``1 − r`` (Pearson r between profiles), the clustering Razdaibiedina & Brechalov
(ICLR MLDD 2022) score with AMI. Lu et al. (PLoS Comput. Biol. 2019) clustered mean
paired-cell-inpainting features hierarchically and tested clusters for GO CC enrichment
against all clustered proteins (GOrilla); their clusters were picked by eye from the
dendrogram, so here the tree is cut at several fixed levels instead (:func:`default_cuts`)
and every cut is tested (the ``cut`` column of ``protein_clusters``).

>>> import numpy as np
>>> x = np.array([[1, 2, 3, 4], [2, 4, 6, 8.5], [4, 3, 2, 1], [8, 6, 4, 2.5]])
>>> cluster_labels(correlation_linkage(x), ["k=2"])["k=2"].tolist()
[1, 1, 2, 2]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from cellrep_ml.enrichment import CLUSTERS_SCHEMA
from cellrep_ml.errors import InputError
from cellrep_ml.evaluate.functional import row_correlation

__all__ = [
    "DEFAULT_HEIGHTS",
    "cluster_labels",
    "cluster_proteins",
    "correlation_linkage",
    "default_cuts",
    "dendrogram_png",
    "parse_cut",
]

#: Correlation-distance heights cut by default: clusters whose members' average
#: correlation with each other is at least 0.5 (h = 0.5) or 0.25 (h = 0.75).
DEFAULT_HEIGHTS: tuple[float, ...] = (0.5, 0.75)

#: Target mean cluster sizes of the default ``k`` cuts: organelle-scale groups (~20
#: proteins), compartments (~10) and sub-compartments / complexes (~5).
_MEAN_SIZES: tuple[int, ...] = (20, 10, 5)

_CUT_RE = re.compile(r"^(k|h)=(.+)$")


def parse_cut(cut: str) -> tuple[str, float]:
    """``"k=10"`` → ``("k", 10)`` (number of clusters), ``"h=0.75"`` → ``("h", 0.75)``.

    Raises
    ------
    InputError
        Not ``k=<int >= 1>`` or ``h=<float in [0, 2]>`` (correlation distance ranges 0–2).
    """
    m = _CUT_RE.match(str(cut).strip())
    try:
        kind, value = m.group(1), float(m.group(2))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise InputError(f"unknown tree cut {cut!r}",
                         expected="'k=<number of clusters>' or 'h=<height>'") from None
    if kind == "k" and (value != int(value) or value < 1):
        raise InputError(f"tree cut {cut!r}: k must be a positive integer")
    if kind == "h" and not 0.0 <= value <= 2.0:
        raise InputError(f"tree cut {cut!r}: height must lie in [0, 2] (1 − r)")
    return kind, int(value) if kind == "k" else value


def default_cuts(n_proteins: int) -> list[str]:
    """Cuts for ``n_proteins``: ``k = n/20, n/10, n/5`` (at least 2, below n) and the heights.

    Clusters of about 20, 10 and 5 proteins on average, at any screen size (a fixed k would
    mean organelles at 500 proteins and complexes at 50), plus :data:`DEFAULT_HEIGHTS`,
    which do not depend on the screen's size.

    >>> default_cuts(200)
    ['k=10', 'k=20', 'k=40', 'h=0.5', 'h=0.75']
    >>> default_cuts(12)
    ['k=2', 'h=0.5', 'h=0.75']
    """
    ks = sorted({min(max(2, round(n_proteins / s)), max(n_proteins - 1, 1)) for s in _MEAN_SIZES})
    return [f"k={k}" for k in ks if k >= 2] + [f"h={h:g}" for h in DEFAULT_HEIGHTS]


def correlation_linkage(profiles: np.ndarray) -> np.ndarray:
    """Average-linkage tree of profiles on the correlation distance ``1 − r``.

    Parameters
    ----------
    profiles : (P, D) array_like of float
        One profile per protein, ``P >= 2``, ``D >= 2``.

    Returns
    -------
    tree : (P - 1, 4) ndarray
        scipy linkage matrix; merge heights in [0, 2].

    Raises
    ------
    InputError
        Fewer than 2 proteins or 2 features, non-finite values, or a constant profile
        (Pearson r undefined).
    """
    x = np.asarray(profiles, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise InputError("profiles must be a (proteins, features) matrix",
                         expected="at least 2 proteins and 2 features", received=f"shape {x.shape}")
    if not np.isfinite(x).all():
        rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise InputError("profiles hold NaN or infinite values", received=f"rows {rows[:5].tolist()}")
    # One BLAS product for every r (pdist's per-pair loop is far slower at 10^4 proteins
    # × 10^3–10^4 features); squareform keeps the upper triangle without index arrays.
    dist = 1.0 - row_correlation(x)
    condensed = squareform(dist, checks=False)
    del dist
    return linkage(np.clip(condensed, 0.0, 2.0), method="average")


def cluster_labels(tree: np.ndarray, cuts: Sequence[str]) -> dict[str, np.ndarray]:
    """Flat cluster labels (1-based) of every cut of a tree.

    ``k=<n>`` asks for at most n clusters (``fcluster`` ``maxclust``; ties in the merge
    heights can give fewer); ``h=<t>`` merges everything joined below height t
    (``distance``). Returns cut → (P,) int64 labels, in the tree's leaf numbering.
    """
    out = {}
    for cut in cuts:
        kind, value = parse_cut(cut)
        criterion = "maxclust" if kind == "k" else "distance"
        out[cut] = fcluster(tree, t=value, criterion=criterion).astype(np.int64)
    return out


def cluster_proteins(
    profiles: np.ndarray,
    proteins: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    dataset: str,
    cuts: Sequence[str] | None = None,
    tree: np.ndarray | None = None,
) -> pl.DataFrame:
    """The ``protein_clusters`` rows of one model on one dataset.

    Parameters
    ----------
    profiles : (P, D) array_like
        Mean profile of each protein (``protein_features`` with ``stat = 'mean'``).
    proteins : (P,) sequence of str
        Gene symbols, unique.
    model_name, model_version, dataset : str
    cuts : sequence of str, optional
        Default :func:`default_cuts` of ``P``; ``k`` values of ``P`` or more are dropped.
    tree : (P - 1, 4) ndarray, optional
        :func:`correlation_linkage` of ``profiles`` when already computed (e.g. to draw it).

    Returns
    -------
    pl.DataFrame
        :data:`~cellrep_ml.enrichment.CLUSTERS_SCHEMA`, one row per protein per cut.

    Raises
    ------
    InputError
        Duplicate proteins, a length mismatch, fewer than 3 proteins, or bad profiles.
    """
    names = [str(p) for p in proteins]
    x = np.asarray(profiles)
    if len(names) != len(x):
        raise InputError("one protein name per profile",
                         expected=f"{len(x)} names", received=f"{len(names)}")
    dup = sorted({p for p in names if names.count(p) > 1})
    if dup:
        raise InputError("proteins must be unique", received=f"duplicates {dup[:5]}")
    if len(names) < 3:
        raise InputError("too few proteins to cluster", expected="at least 3",
                         received=str(len(names)))
    cuts = list(default_cuts(len(names)) if cuts is None else cuts)
    cuts = [c for c in cuts if not (parse_cut(c)[0] == "k" and parse_cut(c)[1] >= len(names))]
    if tree is None:
        tree = correlation_linkage(x)
    elif len(tree) != len(names) - 1:
        raise InputError("tree does not match the profiles",
                         expected=f"{len(names) - 1} merges", received=f"{len(tree)}")
    labels = cluster_labels(tree, cuts)
    frames = [
        pl.DataFrame({"cut": cut, "protein": names, "cluster_id": lab})
        for cut, lab in labels.items()
    ]
    if not frames:
        return pl.DataFrame(schema=CLUSTERS_SCHEMA)
    return pl.concat(frames).select(
        pl.lit(str(model_name)).alias("model_name"),
        pl.lit(str(model_version)).alias("model_version"),
        pl.lit(str(dataset)).alias("dataset"),
        "cut", "protein", "cluster_id",
    ).cast(dict(CLUSTERS_SCHEMA))


def dendrogram_png(trees: dict[str, tuple[np.ndarray, Sequence[str]]], *,
                   title: str | None = None) -> bytes:
    """One dendrogram per model, with its cut heights marked, as PNG bytes.

    Parameters
    ----------
    trees : dict
        Model name → (linkage matrix, cuts); ``h=`` cuts are drawn at their height,
        ``k=`` cuts at the height where the tree falls into ``k`` clusters.
    """
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    from cellrep_ml.viz import figure_png

    n = max(len(trees), 1)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), squeeze=False)
    for ax, (name, (tree, cuts)) in zip(axes[:, 0], trees.items(), strict=False):
        # Past a few hundred leaves a full dendrogram is a solid block: show the top 200.
        dendrogram(tree, ax=ax, no_labels=True, color_threshold=0, above_threshold_color="0.3",
                   truncate_mode="lastp" if len(tree) >= 200 else None, p=200)
        heights = np.sort(tree[:, 2])[::-1]  # cutting below merge i (from the top): i + 2 clusters
        for cut in cuts:
            kind, value = parse_cut(cut)
            if kind == "h":
                y = float(value)
            elif 2 <= value <= len(heights):
                # between the merges that leave k - 1 and k clusters
                y = float(heights[int(value) - 2] + heights[int(value) - 1]) / 2
            else:
                continue
            ax.axhline(y, lw=0.8, ls="--", color="tab:red")
            ax.text(ax.get_xlim()[1], y, f" {cut}", va="center", fontsize=7, color="tab:red")
        ax.set_ylabel("1 − r")
        ax.set_title(f"{name}: {len(tree) + 1} proteins", fontsize=9)
    if title:
        fig.suptitle(title)
    return figure_png(fig)
