"""cellrep_ml.enrichment: hypergeometric tail, Benjamini–Hochberg, the reference enrichment."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from cellrep_ml.annotations import load_reference
from cellrep_ml.enrichment import (
    CLUSTERS_SCHEMA,
    ENRICHMENT_COLUMNS,
    REFERENCE_TABLES,
    benjamini_hochberg,
    enrich,
    hypergeom_sf,
    load_reference_tables,
)


def _exact_tail(k: int, M: int, n: int, N: int) -> Fraction:
    """P(X >= k) by summing the hypergeometric pmf in exact rationals."""
    top = sum(comb(n, i) * comb(M - n, N - i) for i in range(max(k, 0), min(n, N) + 1))
    return Fraction(top, comb(M, N))


# --------------------------------------------------------------------------- hypergeom_sf
@pytest.mark.parametrize(
    ("k", "M", "n", "N", "expected"),
    [
        # 4 successes in 10, 3 draws: (C(4,2)C(6,1) + C(4,3)C(6,0)) / C(10,3) = 40/120
        (2, 10, 4, 3, Fraction(1, 3)),
        (3, 10, 4, 3, Fraction(4, 120)),
        (1, 10, 4, 3, 1 - Fraction(comb(6, 3), 120)),
        # the planted cluster of the dbt test: 10 of 10 members among the 12 carriers of 52
        (10, 52, 12, 10, Fraction(comb(12, 10), comb(52, 10))),
        # every draw a success and every success drawn: 1 / C(M, n)
        (5, 20, 5, 5, Fraction(1, comb(20, 5))),
    ],
)
def test_hypergeom_sf_hand_computed(k, M, n, N, expected):
    assert float(hypergeom_sf(k, M, n, N)) == pytest.approx(float(expected), rel=1e-12)


def test_hypergeom_sf_matches_exact_sum_and_scipy_on_a_grid():
    rng = np.random.default_rng(3)
    M = rng.integers(1, 300, 400)
    n = (rng.random(400) * (M + 1)).astype(np.int64)
    N = (rng.random(400) * (M + 1)).astype(np.int64)
    k = (rng.random(400) * (np.minimum(n, N) + 2)).astype(np.int64)
    got = hypergeom_sf(k, M, n, N)
    assert got.shape == (400,)
    exact = np.array([float(_exact_tail(*map(int, t))) for t in zip(k, M, n, N, strict=True)])
    np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-300)
    # scipy's sf is P(X > k): the inclusive tail at k is sf(k - 1)
    np.testing.assert_allclose(got, stats.hypergeom.sf(k - 1, M, n, N), rtol=1e-12)


def test_hypergeom_sf_tiny_tails_keep_relative_precision():
    # 30 of 30 members among 40 carriers in 5000: ~1e-73, far below 1 - float eps
    p = float(hypergeom_sf(30, 5000, 40, 30))
    assert p == pytest.approx(float(_exact_tail(30, 5000, 40, 30)), rel=1e-9)
    assert 0 < p < 1e-60


def test_hypergeom_sf_edges_and_broadcasting():
    assert hypergeom_sf([0, -1], 10, 4, 3).tolist() == [1.0, 1.0]
    assert hypergeom_sf(4, 10, 4, 3) == 0.0  # more hits than draws
    assert hypergeom_sf(1, 0, 0, 0) == 0.0  # empty population: no hit possible
    assert hypergeom_sf(0, 0, 0, 0) == 1.0
    out = hypergeom_sf(np.arange(4)[:, None], 10, np.array([2, 4]), 3)
    assert out.shape == (4, 2)
    assert np.all(np.diff(out, axis=0) <= 0)  # the tail shrinks as k grows
    assert hypergeom_sf(np.array([], dtype=int), 5, 2, 2).shape == (0,)
    assert float(hypergeom_sf(2.0, 10.0, 4.0, 3.0)) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 10, 11, 3), "must not exceed the population"),
        ((1, 10, 4, 12), "must not exceed the population"),
        ((1, -1, 0, 0), ">= 0"),
        ((1.5, 10, 4, 3), "must hold integers"),
    ],
)
def test_hypergeom_sf_rejects_impossible_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        hypergeom_sf(*args)


# ----------------------------------------------------------------------- benjamini_hochberg
# Benjamini & Hochberg (1995), section 4.1: 15 p-values from a study of myocardial infarction.
BH_1995_P = [
    0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344,
    0.0459, 0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0000,
]  # fmt: skip
# q_(i) = min_{j >= i} 15 p_(j) / j, worked by hand
BH_1995_Q = [
    0.0015, 0.003, 0.0095, 0.035625, 0.0603, 0.0298 * 15 / 7, 0.0298 * 15 / 7, 0.0645,
    0.0765, 0.486, 0.4262 * 15 / 11, 0.5719 * 15 / 12, 0.6528 * 15 / 13, 0.7590 * 15 / 14, 1.0,
]  # fmt: skip


def test_bh_textbook_example():
    q = benjamini_hochberg(BH_1995_P)
    np.testing.assert_allclose(q, BH_1995_Q, rtol=1e-12)
    # the paper rejects the four smallest at FDR 0.05 (Bonferroni only the first three)
    assert (q <= 0.05).sum() == 4


def test_bh_keeps_input_order_and_matches_scipy():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(200), rng.random(30) * 1e-4, [0.5, 0.5, 0.5, 0.0, 1.0]])
    rng.shuffle(p)
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    shuffled = rng.permutation(p.size)
    np.testing.assert_array_equal(benjamini_hochberg(p[shuffled]), q[shuffled])
    assert np.all(q >= p) and np.all(q <= 1)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0)
    assert len(set(q[p == 0.5])) == 1  # ties share their q-value


def test_bh_edges_and_errors():
    assert benjamini_hochberg([]).shape == (0,)
    assert benjamini_hochberg([0.3]).tolist() == [0.3]
    with pytest.raises(ValueError, match="NaN"):
        benjamini_hochberg([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.1, 1.2])
    with pytest.raises(ValueError, match="1-d"):
        benjamini_hochberg([[0.1, 0.2]])


# --------------------------------------------------------------------------------- enrich
def _clusters(rows):
    return pl.DataFrame(
        [("m", "1", "d", "k=2", protein, cid) for protein, cid in rows],
        schema=CLUSTERS_SCHEMA,
        orient="row",
    )


def _annotations(rows):
    return pl.DataFrame(rows, schema=["gene", "go_id", "namespace"], orient="row")


def _kn(row: dict) -> tuple[int, int, int, int]:
    """(k, n, K, N) of an enrichment row."""
    return row["hits"], row["cluster_size"], row["term_size"], row["background_size"]


def test_enrich_counts_against_the_annotated_clustered_background():
    clusters = _clusters(
        [("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", 2), ("f", 2), ("g", 2), ("u", 2)]
    )
    ann = _annotations(
        [("a", "T1", "CC"), ("b", "T1", "CC"), ("c", "T1", "CC"), ("d", "T1", "CC"),
         ("a", "T2", "CC"), ("e", "T2", "CC"), ("f", "T2", "CC"), ("g", "T2", "CC"),
         ("a", "T1", "CC"),  # duplicate row (a second evidence code) counts once
         ("z", "T1", "CC"),  # annotated but not clustered: outside the background
         ("a", "P1", "BP"), ("d", "P1", "BP")]
    )  # fmt: skip
    out = enrich(clusters, ann)
    assert out.columns == list(ENRICHMENT_COLUMNS)
    row = out.filter(pl.col("cluster_id") == 1, pl.col("go_id") == "T1").row(0, named=True)
    # 'u' has no annotation: background N = 7 CC-annotated clustered proteins
    assert _kn(row) == (3, 3, 4, 7)
    assert row["p_value"] == pytest.approx(comb(4, 3) / comb(7, 3), rel=1e-12)
    assert row["fold_enrichment"] == pytest.approx((3 / 3) / (4 / 7))
    assert row["expected"] == pytest.approx(3 * 4 / 7)
    # BP is its own background: only a and d carry a BP annotation
    bp = out.filter(pl.col("namespace") == "BP")
    assert bp["background_size"].unique().to_list() == [2]
    assert bp["p_value"].to_list() == [1.0, 1.0]
    # only pairs with k >= 1 are tested: cluster 2 has no BP hit but P1 (through d)
    bp2 = out.filter(pl.col("cluster_id") == 2, pl.col("namespace") == "BP")
    assert bp2["go_id"].to_list() == ["P1"]
    # one BH family per (clustering, namespace): 4 CC tests
    cc = out.filter(pl.col("namespace") == "CC").sort("cluster_id", "go_id")
    assert cc.height == 4
    expected_fdr = benjamini_hochberg(cc["p_value"].to_numpy())
    np.testing.assert_array_equal(cc["fdr"].to_numpy(), expected_fdr)


def test_enrich_keeps_clusterings_apart():
    one = _clusters([("a", 1), ("b", 1), ("c", 2), ("d", 2)])
    two = one.with_columns(cut=pl.lit("k=1"), cluster_id=pl.lit(0, pl.Int64))
    ann = _annotations([(g, "T", "CC") for g in "ab"] + [(g, "R", "CC") for g in "abcd"])
    out = enrich(pl.concat([one, two]), ann)
    k1 = out.filter(pl.col("cut") == "k=1", pl.col("go_id") == "T").row(0, named=True)
    assert _kn(k1) == (2, 4, 2, 4)
    assert k1["p_value"] == 1.0
    k2 = out.filter(pl.col("cut") == "k=2", pl.col("go_id") == "T").row(0, named=True)
    assert k2["p_value"] == pytest.approx(1 / comb(4, 2))


def test_enrich_rejects_a_protein_in_two_clusters():
    clusters = _clusters([("a", 1), ("a", 2), ("b", 2)])
    with pytest.raises(ValueError, match="'a' has 2 clusters"):
        enrich(clusters, _annotations([("a", "T", "CC")]))


def test_enrich_names_missing_columns():
    with pytest.raises(ValueError, match=r"clusters lacks columns \['cut'\]"):
        enrich(_clusters([("a", 1)]).drop("cut"), _annotations([("a", "T", "CC")]))


# ------------------------------------------------------------------ load_reference_tables
def test_load_reference_tables_writes_the_dbt_sources():
    ref = load_reference()
    con = duckdb.connect()
    con.execute("create table ref_go_terms as select 1 as stale")  # replaced, not appended
    written = load_reference_tables(con, ref)
    assert written == {
        "ref_go_terms": ref.go_terms.height,
        "ref_go_edges": ref.go_edges.height,
        "ref_gene_annotations": ref.gene_annotations.height,
    }
    for table, name in REFERENCE_TABLES.items():
        got = con.sql(f"select * from {name}").pl()
        assert got.columns == getattr(ref, table).columns
        assert got.sort(got.columns).equals(getattr(ref, table).sort(got.columns))


def test_load_reference_tables_is_all_or_nothing():
    ref = load_reference()
    con = duckdb.connect()
    load_reference_tables(con, ref)
    # a read-only view named like the last table makes its replacement fail midway
    con.execute("drop table ref_gene_annotations")
    con.execute("create view ref_gene_annotations as select 1 as x")
    smaller = ref.go_terms.head(5)
    ref.go_terms = smaller
    with pytest.raises(duckdb.Error):
        load_reference_tables(con, ref)
    assert con.sql("select count(*) from ref_go_terms").fetchall()[0][0] > 5
