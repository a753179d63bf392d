"""Multi-localization score and variability ranking (Lu 2019, Fig. 5)."""

from __future__ import annotations

import numpy as np
import pytest

from cellrep_ml.evaluate import multilocalization_scores, variability_ranking


def test_sign_by_hand() -> None:
    a = np.array([[0.0, 1.0], [0.0, -1.0]])  # mu_A = (0, 0)
    b = np.array([[4.0, 1.0], [4.0, -1.0]])  # mu_B = (4, 0)
    cells = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    s = multilocalization_scores(cells, a, b)
    np.testing.assert_allclose(s, [np.log(1 / 3), np.log(3 / 1), 0.0], atol=1e-12)
    assert s[0] < 0 < s[1]  # negative = closer to A


def test_antisymmetric_in_the_two_compartments() -> None:
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(10, 5)), rng.normal(size=(12, 5)) + 1, rng.normal(size=(7, 5))
    np.testing.assert_allclose(multilocalization_scores(c, a, b),
                               -multilocalization_scores(c, b, a))


def test_identical_means_and_dimension_mismatch_rejected() -> None:
    a = np.ones((3, 2))
    with pytest.raises(ValueError, match="same mean"):
        multilocalization_scores(a, a, a.copy())
    with pytest.raises(ValueError, match="reference_b"):
        multilocalization_scores(a, a, np.ones((3, 3)))


def test_variability_ranks_images_by_spread() -> None:
    scores = np.array([0.0, 0.1, -2.0, 2.0, 0.5, 0.5, 9.0])
    images = np.array(["calm", "calm", "wild", "wild", "flat", "flat", "single"])
    t = variability_ranking(scores, images)
    assert t["image"].to_list() == ["wild", "calm", "flat"]  # "single" has one cell
    assert t["rank"].to_list() == [1, 2, 3]
    assert t["std"][0] == pytest.approx(np.std([-2.0, 2.0], ddof=1))
    assert t["mean"][1] == pytest.approx(0.05)
