"""Clustering score Gamma (Kobayashi 2021) by hand, and over repeated UMAPs (kept small)."""

from __future__ import annotations

import numpy as np
import pytest

from cellrep_ml.evaluate import clustering_score, clustering_score_repeats, umap_embedding


def _two_classes() -> tuple[np.ndarray, np.ndarray]:
    pts = np.array([[0.0, 0], [1, 0], [-1, 0], [10, 0], [11, 0], [9, 0]])
    return pts, np.array([0, 0, 0, 1, 1, 1])


def test_median_reading_by_hand() -> None:
    # Class centroids (median) (0,0) and (10,0); class sizes median([0,1,1]) = 1.
    # Centroid spread: median distance to their median (5,0) = 5 -> Gamma = 5 / 1.
    pts, y = _two_classes()
    assert clustering_score(pts, y, reading="median") == pytest.approx(5.0)


def test_reference_reading_by_hand() -> None:
    # Plain std of the pooled centroid coordinates [0, 0, 10, 0] = sqrt(18.75).
    pts, y = _two_classes()
    assert clustering_score(pts, y, reading="reference") == pytest.approx(np.sqrt(18.75))


@pytest.mark.parametrize("reading", ["median", "reference"])
def test_invariant_to_translation_rotation_and_scale(reading: str) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    pts = rng.normal(size=(120, 2)) + 4 * rng.normal(size=(4, 2))[y]
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = 3.0 * pts @ rot.T + np.array([5.0, -2.0])
    base = clustering_score(pts, y, reading=reading)
    if reading == "median":
        # Medians are taken per coordinate: rotation changes them slightly.
        assert clustering_score(moved, y, reading=reading) == pytest.approx(base, rel=0.15)
    assert clustering_score(3.0 * pts + 7.0, y, reading=reading) == pytest.approx(base)


def test_tighter_classes_score_higher() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 50)
    centres = 5 * rng.normal(size=(3, 2))[y]
    noise = rng.normal(size=(150, 2))
    assert clustering_score(centres + 0.5 * noise, y) > clustering_score(centres + 2 * noise, y)


def test_unknown_reading_and_single_class_rejected() -> None:
    pts, y = _two_classes()
    with pytest.raises(ValueError, match="reading"):
        clustering_score(pts, y, reading="mean")
    with pytest.raises(ValueError, match="labels"):
        clustering_score(pts, np.zeros(6))


def test_umap_and_repeats_on_planted_classes() -> None:
    # One small data set for all UMAP checks: numba compiles umap-learn on first use.
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 8)) + 10 * rng.normal(size=(3, 8))[y]
    e1 = umap_embedding(x, seed=7)
    assert e1.shape == (120, 2) and np.isfinite(e1).all()
    np.testing.assert_array_equal(e1, umap_embedding(x, seed=7))
    mean, sd, values = clustering_score_repeats(x, y, seeds=[7, 8])
    assert values.shape == (2,)
    assert values[0] == pytest.approx(clustering_score(e1, y))
    assert mean == pytest.approx(values.mean())
    assert sd == pytest.approx(values.std(ddof=1))
    assert mean > 3.0


def test_umap_rejects_too_few_points() -> None:
    with pytest.raises(ValueError, match="n_neighbors"):
        umap_embedding(np.random.default_rng(0).normal(size=(10, 3)), seed=0)
