"""Property-driven checks shared by every score: chance level on noise, near-perfect on planted
structure, and NaN/inf rejected naming the argument. A new score joins by adding a row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
from _evaldata import make_cells, make_profiles

from cellrep_ml.evaluate import (
    clustering_score,
    feature_spectrum,
    functional_scores,
    knn_balanced_accuracy,
    max_f_beta,
    multilocalization_scores,
    pairwise_distance_scores,
    umap_embedding,
    variability_ranking,
)


@dataclass(frozen=True)
class Score:
    """``run(planted, seed) -> (value, chance)``; ``tol`` around chance; ``good`` on planted."""

    name: str
    run: Callable[[bool, int], tuple[float, float]]
    tol: float | None  # None: no closed-form chance level to test against
    good: Callable[[float], bool]


def _knn(planted: bool, seed: int) -> tuple[float, float]:
    d = make_cells(planted=planted, seed=seed)
    return knn_balanced_accuracy(d.features, d.labels, ks=(11,))[11], 1 / 3


def _pairwise(planted: bool, seed: int) -> tuple[float, float]:
    d = make_cells(planted=planted, seed=seed)
    res = pairwise_distance_scores(d.features, d.image_ids, d.proteins, d.annotations,
                                   min_proteins=5, n_pairs=200, seed=seed)
    return res.overall, 0.0


def _functional(key: str) -> Callable[[bool, int], tuple[float, float]]:
    def run(planted: bool, seed: int) -> tuple[float, float]:
        x, names, ann = make_profiles(planted=planted, seed=seed)
        out = functional_scores(x, names, ann)
        return out[key], (out["prevalence"] if key == "ap" else 0.0)
    return run


def _gamma(reading: str) -> Callable[[bool, int], tuple[float, float]]:
    def run(planted: bool, seed: int) -> tuple[float, float]:
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(5), 80)
        pts = rng.normal(size=(labels.size, 2))
        if planted:
            pts += 20.0 * rng.normal(size=(5, 2))[labels]
        return clustering_score(pts, labels, reading=reading), 0.0
    return run


def _multiloc(planted: bool, seed: int) -> tuple[float, float]:
    # Mean score of A-only cells: about 0 when A and B are indistinguishable noise,
    # clearly negative (closer to mu_A) when the compartments differ.
    rng = np.random.default_rng(seed)
    shift = 5.0 if planted else 0.0
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(300, 8)) + shift
    cells = rng.normal(size=(300, 8))  # fresh A-only cells
    return float(multilocalization_scores(cells, a, b).mean()), 0.0


SCORES = [
    Score("knn_balanced_accuracy", _knn, 0.1, lambda v: v > 0.95),
    Score("pairwise_distance", _pairwise, 0.05, lambda v: v < -0.5),
    Score("functional_ap", _functional("ap"), 0.05, lambda v: v > 0.95),
    Score("functional_ami", _functional("ami"), 0.1, lambda v: v > 0.95),
    Score("functional_f05", _functional("f05"), None, lambda v: v > 0.95),
    Score("functional_map", _functional("map"), None, lambda v: v > 0.95),
    Score("clustering_score_median", _gamma("median"), 0.5, lambda v: v > 5),
    Score("clustering_score_reference", _gamma("reference"), 0.5, lambda v: v > 5),
    Score("multilocalization", _multiloc, 0.1, lambda v: v < -0.5),
]


@pytest.mark.parametrize("score", [s for s in SCORES if s.tol is not None], ids=lambda s: s.name)
def test_chance_level_on_noise(score: Score) -> None:
    value, chance = score.run(False, 11)
    assert abs(value - chance) <= score.tol, (value, chance)


@pytest.mark.parametrize("score", SCORES, ids=lambda s: s.name)
def test_near_perfect_on_planted_structure(score: Score) -> None:
    value, chance = score.run(True, 12)
    assert score.good(value), value
    assert value != pytest.approx(chance, abs=score.tol or 0.05)


def _bad(kind: str) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(40, 4))
    x[3, 1] = np.nan if kind == "nan" else np.inf
    return x


_LABELS = np.repeat(np.arange(4), 10)
_ANN = pl.DataFrame({"protein": [f"p{i}" for i in range(40)],
                     "term": [f"t{i % 4}" for i in range(40)]})

BAD_INPUTS: list[tuple[str, str, Callable[[np.ndarray], object]]] = [
    ("knn", "features", lambda x: knn_balanced_accuracy(x, _LABELS, ks=(1,))),
    ("clustering_score", "embedding_2d", lambda x: clustering_score(x[:, :2], _LABELS)),
    ("multiloc_features", "features", lambda x: multilocalization_scores(x, np.zeros((5, 4)), np.ones((5, 4)))),
    ("multiloc_reference", "reference_a",
     lambda x: multilocalization_scores(np.zeros((2, 4)), x, np.ones((2, 4)))),
    ("functional", "features",
     lambda x: functional_scores(x, [f"p{i}" for i in range(40)], _ANN)),
    ("pairwise", "features",
     lambda x: pairwise_distance_scores(x, np.arange(40) // 2, np.arange(40) // 4, _ANN)),
    ("feature_spectrum", "codes_or_histograms",
     lambda x: feature_spectrum(np.abs(x), np.arange(40) // 4, n_clusters=2)),
    ("umap", "features", lambda x: umap_embedding(x, seed=0)),
    ("max_f_beta", "y_score", lambda x: max_f_beta(_LABELS == 0, x[:, 1])),
    ("variability", "scores", lambda x: variability_ranking(x[:, 1], _LABELS)),
]


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize(("name", "arg", "call"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_non_finite_input_rejected_naming_the_argument(kind, name, arg, call) -> None:
    with pytest.raises(ValueError, match=arg):
        call(_bad(kind))
