"""Normalised pairwise distance (Lu 2019 Fig. 2B) and its cell-line control (Table 2)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from _evaldata import make_cells

from cellrep_ml.evaluate import (
    ImageDistances,
    cell_line_distance_scores,
    pairwise_distance_scores,
    single_term_proteins,
)


def test_image_distance_is_the_mean_over_cross_image_cell_pairs() -> None:
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    dist = ImageDistances(x, np.array([0, 0, 1]))
    # cells of image 0 at (0,0), (2,0); image 1 at (0,3): distances 3 and sqrt(13)
    assert dist(0, 1) == pytest.approx((3 + np.sqrt(13)) / 2)
    assert dist(1, 0) == dist(0, 1)


def test_single_term_proteins_threshold() -> None:
    ann = pl.DataFrame({"protein": ["a", "b", "c", "d", "d", "e"],
                        "term": ["x", "x", "y", "x", "y", "y"]})
    kept = single_term_proteins(ann, min_proteins=2)
    # d has two terms (dropped); y is then held by c, e only -> kept; x by a, b -> kept
    assert kept.rows() == [("a", "x"), ("b", "x"), ("c", "y"), ("e", "y")]
    assert single_term_proteins(ann, min_proteins=3).height == 0


def test_per_term_table_and_seeded_determinism(planted_cells) -> None:
    d = planted_cells
    kw = dict(min_proteins=5, n_pairs=100, seed=3)
    a = pairwise_distance_scores(d.features, d.image_ids, d.proteins, d.annotations, **kw)
    b = pairwise_distance_scores(d.features, d.image_ids, d.proteins, d.annotations, **kw)
    assert a.per_term.equals(b.per_term)
    assert a.per_term["term"].to_list() == ["term0", "term1", "term2"]
    assert (a.per_term["score"] < -0.5).all()
    expected = (a.per_term["d_same"] - a.per_term["d_diff"]) / a.per_term["d_diff"]
    np.testing.assert_allclose(a.per_term["score"].to_numpy(), expected.to_numpy())
    assert a.overall == pytest.approx(a.per_term["score"].mean())


def test_terms_below_threshold_are_rejected(noise_cells) -> None:
    d = noise_cells
    with pytest.raises(ValueError, match="annotations"):
        pairwise_distance_scores(d.features, d.image_ids, d.proteins, d.annotations,
                                 min_proteins=7)


def test_image_with_two_proteins_rejected(noise_cells) -> None:
    d = noise_cells
    proteins = d.proteins.copy()
    proteins[0] = "other"
    with pytest.raises(ValueError, match="image_ids"):
        pairwise_distance_scores(d.features, d.image_ids, proteins, d.annotations,
                                 min_proteins=5)


def test_cell_line_control_on_noise_is_at_chance(noise_cells) -> None:
    d = noise_cells
    t = cell_line_distance_scores(d.features, d.image_ids, d.proteins, d.cell_lines,
                                  d.annotations, min_proteins=5, n_pairs=300, seed=0)
    assert t["condition"].to_list() == ["same_cell_line", "different_cell_line"]
    assert (t["n_pairs_same"] == 300).all() and (t["n_pairs_diff"] == 300).all()
    assert np.abs(t["score"].to_numpy()).max() < 0.05


def test_cell_line_effect_weakens_the_different_line_score() -> None:
    # A strong cell-line shift: same-term images are closest when the line also matches.
    d = make_cells(planted=True, line_offset=6.0, seed=5)
    t = cell_line_distance_scores(d.features, d.image_ids, d.proteins, d.cell_lines,
                                  d.annotations, min_proteins=5, n_pairs=300, seed=0)
    same, diff = t["score"].to_list()
    assert same < diff < 0


def test_cell_line_constraints_hold() -> None:
    from cellrep_ml.evaluate.pairwise_distance import _draw_constrained

    rng = np.random.default_rng(0)
    term = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    line = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    prot = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    for same_term in (True, False):
        for same_line in (True, False):
            pairs = _draw_constrained(rng, term, line, prot, same_term=same_term,
                                      same_line=same_line, n_pairs=50)
            i, j = pairs.T
            assert (prot[i] != prot[j]).all()
            assert ((term[i] == term[j]) == same_term).all()
            assert ((line[i] == line[j]) == same_line).all()
