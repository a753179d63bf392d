"""PNG figures of the evaluations: UMAP scatter, kNN curves, PR curves, spectra, distances.

matplotlib with the Agg backend (via :mod:`cellrep_ml.viz`); every function returns PNG
bytes, ready to attach as metadata or write to a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from cellrep_ml.errors import InputError
from cellrep_ml.evaluate._validation import check_labels, check_matrix, check_vector
from cellrep_ml.evaluate.feature_spectrum import FeatureSpectrum
from cellrep_ml.viz import figure_png  # also selects the Agg backend

__all__ = [
    "umap_scatter_png",
    "knn_accuracy_png",
    "pr_curve_png",
    "feature_spectrum_png",
    "pairwise_distance_png",
]


def umap_scatter_png(embedding_2d: np.ndarray, labels: Sequence | np.ndarray, *,
                     title: str | None = None, point_size: float = 4.0) -> bytes:
    """Scatter of a 2D embedding coloured by label, with a legend (Kobayashi et al. 2021, Fig. 2).

    Parameters
    ----------
    embedding_2d : (N, 2) ndarray
    labels : (N,) array-like
        One colour per distinct label (tab20, cycling beyond 20).
    """
    x = check_matrix(embedding_2d, "embedding_2d")
    if x.shape[1] != 2:
        raise InputError("embedding_2d must have 2 columns", expected="(N, 2)",
                         received=str(x.shape))
    y = check_labels(labels, "labels", x.shape[0]).astype(str)
    classes = np.unique(y)
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, c in enumerate(classes):
        m = y == c
        ax.scatter(x[m, 0], x[m, 1], s=point_size, color=cmap(i % 20), label=c, alpha=0.8,
                   linewidths=0)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=2,
              frameon=False, ncol=1 + len(classes) // 30)
    if title:
        ax.set_title(title)
    return figure_png(fig)


def knn_accuracy_png(results: Mapping[str, Mapping[int, float]], *,
                     title: str | None = None) -> bytes:
    """Balanced accuracy against k, one line per method or layer (Lu et al. 2019, Table 1).

    Parameters
    ----------
    results : mapping of str to (mapping of int to float)
        ``{name: knn_balanced_accuracy(...)}``.
    """
    if not results:
        raise InputError("results is empty", expected="at least one method")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in results.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    all_ks = sorted({k for c in results.values() for k in c})
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return figure_png(fig)


def pr_curve_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                 title: str | None = None) -> bytes:
    """Precision-recall curves with their chance lines (Razdaibiedina & Brechalov 2022, Fig. 1b).

    Parameters
    ----------
    curves : mapping of str to (y_true, y_score)
        Per method: pair labels and scores, e.g. from
        :func:`cellrep_ml.evaluate.functional.functional_pairs`. The dashed line of each
        curve is its chance level, the positive prevalence.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if not curves:
        raise InputError("curves is empty", expected="at least one curve")
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (name, (y_true, y_score)) in enumerate(curves.items()):
        y = np.asarray(y_true, dtype=bool)
        s = check_vector(y_score, f"curves[{name!r}] scores")
        precision, recall, _ = precision_recall_curve(y, s)
        color = f"C{i % 10}"
        ap = average_precision_score(y, s)
        ax.step(recall, precision, where="post", color=color, label=f"{name} (AP {ap:.3f})")
        ax.axhline(y.mean(), color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, frameon=False, title="dashed: chance", title_fontsize=7)
    if title:
        ax.set_title(title)
    return figure_png(fig)


def feature_spectrum_png(spectrum: FeatureSpectrum, *, title: str | None = None) -> bytes:
    """Code-code correlation heatmap in dendrogram order, with the dendrogram and clusters (Kobayashi et al. 2021, Supp. Fig. 9d)."""
    from scipy.cluster.hierarchy import dendrogram

    corr = spectrum.correlation[np.ix_(spectrum.order, spectrum.order)]
    fig = plt.figure(figsize=(6, 6.8))
    ax_d = fig.add_axes((0.1, 0.8, 0.75, 0.15))
    ax_c = fig.add_axes((0.1, 0.77, 0.75, 0.025))
    ax_h = fig.add_axes((0.1, 0.05, 0.75, 0.71))
    ax_cb = fig.add_axes((0.87, 0.05, 0.03, 0.71))
    dendrogram(spectrum.linkage, ax=ax_d, no_labels=True, color_threshold=0,
               above_threshold_color="k")
    ax_d.set_axis_off()
    ax_c.imshow(spectrum.clusters[spectrum.order][None, :], aspect="auto", cmap="tab20",
                interpolation="nearest")
    ax_c.set_axis_off()
    im = ax_h.imshow(corr, cmap="bwr", vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
    ax_h.set_xlabel("code (spectrum order)")
    ax_h.set_ylabel("code (spectrum order)")
    fig.colorbar(im, cax=ax_cb, label="Pearson r")
    if title:
        ax_d.set_title(title)
    return figure_png(fig)


def pairwise_distance_png(per_term: pl.DataFrame, *, title: str | None = None) -> bytes:
    """Bars of the normalised pairwise distance score per term (Lu et al. 2019, Fig. 2B).

    Parameters
    ----------
    per_term : pl.DataFrame
        Columns ``term`` and ``score`` (e.g. ``pairwise_distance_scores(...).per_term``).
    """
    if not {"term", "score"} <= set(per_term.columns) or per_term.height == 0:
        raise InputError("per_term needs rows with columns 'term' and 'score'",
                         expected="a non-empty per-term table", received=str(per_term.columns))
    table = per_term.sort("score")
    fig, ax = plt.subplots(figsize=(5, 0.3 * table.height + 1.2))
    scores = table["score"].to_numpy()
    ax.barh(table["term"].to_list(), scores,
            color=np.where(scores < 0, "tab:blue", "tab:red"))
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("normalised pairwise distance (negative = same term closer)")
    if title:
        ax.set_title(title)
    return figure_png(fig)
