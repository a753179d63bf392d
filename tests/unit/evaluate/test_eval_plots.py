"""Every plot helper returns a PNG, and rejects unusable input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cellrep_ml.evaluate import feature_spectrum
from cellrep_ml.evaluate.plots import (
    feature_spectrum_png,
    knn_accuracy_png,
    pairwise_distance_png,
    pr_curve_png,
    umap_scatter_png,
)

PNG = b"\x89PNG\r\n\x1a\n"
rng = np.random.default_rng(0)


def _spectrum():
    hist = rng.poisson(3.0, size=(12, 16)).astype(float)
    return feature_spectrum(hist, np.repeat(np.arange(6), 2), n_clusters=3)


PLOTS = [
    ("umap", lambda: umap_scatter_png(rng.normal(size=(50, 2)), np.repeat(["a", "b"], 25),
                                      title="t")),
    ("knn", lambda: knn_accuracy_png({"conv3": {1: 0.5, 11: 0.7}, "conv4": {1: 0.6, 11: 0.8}})),
    ("pr", lambda: pr_curve_png({"m": (rng.random(40) < 0.3, rng.normal(size=40))})),
    ("spectrum", lambda: feature_spectrum_png(_spectrum(), title="spectrum")),
    ("pairwise", lambda: pairwise_distance_png(pl.DataFrame({"term": ["x", "y"],
                                                             "score": [-0.4, 0.1]}))),
]


@pytest.mark.parametrize(("name", "make"), PLOTS, ids=[p[0] for p in PLOTS])
def test_returns_png_bytes(name, make) -> None:
    png = make()
    assert png.startswith(PNG) and len(png) > 1000


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="embedding_2d"):
        umap_scatter_png(np.zeros((5, 3)), list("abcde"))
    with pytest.raises(ValueError, match="results"):
        knn_accuracy_png({})
    with pytest.raises(ValueError, match="per_term"):
        pairwise_distance_png(pl.DataFrame({"term": ["x"]}))
