"""Multi-scale functional evaluation (Razdaibiedina & Brechalov 2022) and the copairs cross-check."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from _evaldata import make_profiles

from cellrep_ml.evaluate import (
    align_standard,
    functional_pairs,
    functional_scores,
    max_f_beta,
    per_query_average_precision,
)


def test_f05_by_hand() -> None:
    # Ranked labels 1 0 1 0. Thresholds: top1 P=1 R=.5 -> F=1.25*.5/(.25+.5)=0.8333;
    # top2 P=.5 R=.5 -> .5; top3 P=2/3 R=1 -> 0.7143; top4 P=.5 R=1 -> 0.5556.
    y = np.array([1, 0, 1, 0], dtype=bool)
    s = np.array([0.9, 0.8, 0.7, 0.6])
    assert max_f_beta(y, s) == pytest.approx(1.25 * 0.5 / 0.75)
    assert max_f_beta(y, s, beta=1.0) == pytest.approx(0.8)  # top3: 2*(2/3)/(5/3)


def test_tiny_ap_by_hand() -> None:
    # Four proteins: a, b share x; c, d share y; b, c share z -> positive pairs ab, bc, cd.
    # Pearson r of the profiles below (rounded): ab .674, ad .566, cd .276, bd .183, bc .124,
    # ac -.360, so the ranked labels are P N P N P N.
    # AP = (1/1 + 2/3 + 3/5) / 3; max F0.5 at the top pair: P = 1, R = 1/3 -> 5/7.
    ann = pl.DataFrame({"protein": ["a", "b", "c", "d", "b", "c"],
                        "term": ["x", "x", "y", "y", "z", "z"]})
    x = np.array([[1.0, 0.05, 0.0, 0.0, 0.0, 0.0],
                  [1.0, 0.1, 0.9, 0.0, 0.0, 0.0],
                  [0.0, 0.0, 0.9, 1.0, 0.1, 0.0],
                  [0.9, 0.05, 0.0, 1.0, 0.1, 0.05]])
    names = ["a", "b", "c", "d"]
    y, r = functional_pairs(align_standard(x, names, ann))
    np.testing.assert_array_equal(y, [True, False, False, True, False, True])  # triu order
    np.testing.assert_allclose(r, [0.674, -0.360, 0.566, 0.124, 0.183, 0.276], atol=1e-3)
    out = functional_scores(x, names, ann)
    assert out["ap"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert out["f05"] == pytest.approx(5 / 7)
    assert out["prevalence"] == pytest.approx(0.5)
    assert (out["n_proteins"], out["n_pairs"], out["n_positive_pairs"]) == (4, 6, 3)
    # a and d are singly annotated (x, y): two clusters would be needed to separate them.
    assert out["n_terms"] == 3


def test_per_query_ap_by_hand() -> None:
    sim = np.array([[1.0, 0.9, 0.5, 0.1],
                    [0.9, 1.0, 0.2, 0.3],
                    [0.5, 0.2, 1.0, 0.8],
                    [0.1, 0.3, 0.8, 1.0]])
    rel = np.array([[0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    ap = per_query_average_precision(sim, rel)
    # query 0 ranks 1 (neg), 2 (pos), 3 (pos): (1/2 + 2/3) / 2
    assert ap[0] == pytest.approx((0.5 + 2 / 3) / 2)
    assert np.isnan(ap[1])
    # query 2: sims to 0, 1, 3 = 0.5, 0.2, 0.8 -> order 3, 0, 1; positive 0 at rank 2 -> 1/2
    assert ap[2] == pytest.approx(0.5)
    assert ap[3] == pytest.approx(1 / 3)  # sims 0.1, 0.3, 0.8 -> order 2, 1, 0: rank 3


def test_only_standard_proteins_are_scored() -> None:
    x, names, ann = make_profiles(planted=True, seed=0)
    extra = np.vstack([x, np.random.default_rng(0).normal(size=(5, x.shape[1]))])
    out = functional_scores(extra, [*names, "u1", "u2", "u3", "u4", "u5"], ann)
    assert out["n_proteins"] == len(names)
    assert out["n_pairs"] == len(names) * (len(names) - 1) // 2
    assert out["n_clusters"] == out["n_terms"] == 6


def test_duplicates_and_constant_profiles_rejected() -> None:
    x, names, ann = make_profiles(planted=False, seed=0)
    names = names.copy()
    names[1] = names[0]
    with pytest.raises(ValueError, match="proteins"):
        functional_scores(x, names, ann)
    x2, names2, _ = make_profiles(planted=False, seed=0)
    x2[3] = 1.0
    with pytest.raises(ValueError, match="features"):
        functional_scores(x2, names2, ann)


def test_per_protein_ap_matches_copairs() -> None:
    """copairs reports AP per profile (its mAP averages those per group), not the global AP
    over all pairs; we compare the shared quantity: for each protein, the AP of ranking all
    other proteins by Pearson r (copairs ``distance="correlation"``) with positives = same
    term (single-label standard: ``pos_sameby=["term"]``, ``neg_diffby=["term"]``), and the
    mean of those APs (our ``map``)."""
    import pandas as pd  # copairs' own dependency
    from copairs.map import average_precision

    rng = np.random.default_rng(8)
    n_terms, per_term, dim = 4, 10, 12
    terms = np.repeat(np.arange(n_terms), per_term)
    x = rng.normal(size=(terms.size, dim)) + 0.8 * rng.normal(size=(n_terms, dim))[terms]
    names = np.array([f"P{i:03d}" for i in range(terms.size)])  # sorted = input order
    ann = pl.DataFrame({"protein": names, "term": [f"t{t}" for t in terms]})

    meta = pd.DataFrame({"protein": names, "term": [f"t{t}" for t in terms]})
    ref = average_precision(meta, x, pos_sameby=["term"], pos_diffby=[], neg_sameby=[],
                            neg_diffby=["term"], distance="correlation", progress_bar=False)

    std = align_standard(x, names, ann)
    corr = np.corrcoef(std.profiles)
    same = terms[:, None] == terms[None, :]
    ours = per_query_average_precision(corr, same)
    np.testing.assert_allclose(ours, ref["average_precision"].to_numpy(), rtol=1e-6)
    out = functional_scores(x, names, ann)
    assert out["map"] == pytest.approx(ref["average_precision"].mean(), rel=1e-6)
    assert 0.3 < out["map"] < 1.0  # partial structure: neither chance nor perfect
