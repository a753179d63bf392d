"""cellrep_ml.clusters (average-linkage on 1 − r, tree cuts) and enrichment.compartment_recovery."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score

from cellrep_ml.clusters import (
    cluster_labels,
    cluster_proteins,
    correlation_linkage,
    default_cuts,
    dendrogram_png,
    parse_cut,
)
from cellrep_ml.enrichment import CLUSTERS_SCHEMA, RECOVERY_COLUMNS, compartment_recovery
from cellrep_ml.errors import InputError


def planted(n_groups: int = 6, per_group: int = 8, dim: int = 32, noise: float = 0.3,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Profiles = group centroid × random gain + offset + noise; labels 0..n_groups-1."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(n_groups, dim))
    labels = np.repeat(np.arange(n_groups), per_group)
    # Gain and offset change the scale of a profile but not its correlation: 1 − r
    # must ignore them (Euclidean distance would not).
    gain = rng.uniform(0.2, 5.0, size=(len(labels), 1))
    offset = rng.normal(scale=10.0, size=(len(labels), 1))
    x = gain * (centroids[labels] + noise * rng.normal(size=(len(labels), dim))) + offset
    perm = rng.permutation(len(labels))
    return x[perm], labels[perm]


def test_planted_groups_are_recovered_exactly():
    x, labels = planted()
    got = cluster_labels(correlation_linkage(x), ["k=6"])["k=6"]
    assert adjusted_rand_score(labels, got) == 1.0


def test_noise_clusters_at_chance():
    rng = np.random.default_rng(1)
    _, labels = planted()
    x = rng.normal(size=(len(labels), 32))
    got = cluster_labels(correlation_linkage(x), ["k=6"])["k=6"]
    assert abs(adjusted_rand_score(labels, got)) < 0.1


def test_height_cut_separates_uncorrelated_groups_and_joins_correlated_members():
    x, labels = planted(noise=0.2)
    tree = correlation_linkage(x)
    assert tree[:, 2].min() >= 0 and tree[:, 2].max() <= 2
    got = cluster_labels(tree, ["h=0.5", "h=2"])
    # members correlate at r ≈ 0.96, centroids at r ≈ 0: cutting at 1 − r = 0.5 gives the groups
    assert adjusted_rand_score(labels, got["h=0.5"]) == 1.0
    assert len(set(got["h=2"])) == 1  # everything merges below the maximum distance


def test_cluster_proteins_rows_follow_the_schema():
    x, labels = planted(n_groups=3, per_group=10)
    names = [f"P{i:03d}" for i in range(len(labels))]
    df = cluster_proteins(x, names, model_name="pci", model_version="4", dataset="sim",
                          cuts=["k=3", "h=0.5", "k=999"])
    assert df.schema == CLUSTERS_SCHEMA
    assert sorted(df["cut"].unique()) == ["h=0.5", "k=3"]  # k >= P dropped
    assert df.height == 2 * len(names)
    k3 = df.filter(pl.col("cut") == "k=3").sort("protein")
    assert adjusted_rand_score(labels, k3["cluster_id"].to_numpy()) == 1.0
    assert set(df["model_name"]) == {"pci"} and set(df["model_version"]) == {"4"}


def test_default_cuts_scale_with_the_screen():
    assert default_cuts(200) == ["k=10", "k=20", "k=40", "h=0.5", "h=0.75"]
    assert default_cuts(1000)[:3] == ["k=50", "k=100", "k=200"]
    assert default_cuts(60) == ["k=3", "k=6", "k=12", "h=0.5", "h=0.75"]
    assert default_cuts(4) == ["k=2", "h=0.5", "h=0.75"]
    x, _ = planted(n_groups=2, per_group=2)
    df = cluster_proteins(x, list("ABCD"), model_name="m", model_version="1", dataset="d")
    assert set(df["cut"]) == {"k=2", "h=0.5", "h=0.75"}


@pytest.mark.parametrize(("cut", "expected"), [("k=10", ("k", 10)), ("h=0.75", ("h", 0.75)),
                                               (" k=2 ", ("k", 2))])
def test_parse_cut(cut, expected):
    assert parse_cut(cut) == expected


@pytest.mark.parametrize("cut", ["k=0", "k=2.5", "h=3", "x=1", "10", "k="])
def test_parse_cut_rejects(cut):
    with pytest.raises(InputError, match="cut"):
        parse_cut(cut)


def test_bad_profiles_are_rejected_with_their_rows():
    x, _ = planted(n_groups=2, per_group=3)
    x[4] = 1.0
    with pytest.raises(InputError, match=r"constant profile.*rows \[4\]"):
        correlation_linkage(x)
    x[4, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        correlation_linkage(x)
    with pytest.raises(InputError, match="unique"):
        cluster_proteins(np.ones((3, 4)), ["A", "A", "B"], model_name="m", model_version="1",
                         dataset="d")
    with pytest.raises(InputError, match="at least 3"):
        cluster_proteins(np.eye(2), ["A", "B"], model_name="m", model_version="1", dataset="d")


def test_dendrogram_png():
    x, _ = planted(n_groups=3, per_group=4)
    png = dendrogram_png({"pci": (correlation_linkage(x), ["k=3", "h=0.5"])}, title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- compartment_recovery
def _clusters(rows):
    return pl.DataFrame([("m", "1", "d", cut, p, c) for cut, p, c in rows],
                        schema=CLUSTERS_SCHEMA, orient="row")


def _enriched(rows):
    return pl.DataFrame(
        [("m", "1", "d", cut, "CC", c, t, r, 0.001) for cut, c, t, r in rows],
        schema=["model_name", "model_version", "dataset", "cut", "namespace", "cluster_id",
                "go_id", "term_rank", "fdr"], orient="row")


TERMS = {"mito": ("GO:M",), "nucleolus": ("GO:N", "GO:N2"), "er": ("GO:E",)}


def test_compartment_recovery():
    truth = pl.DataFrame({"protein": list("abcdefghij"),
                          "compartment": ["mito"] * 4 + ["nucleolus"] * 4 + ["er"] * 2})
    clusters = _clusters([("k=2", p, 1 if p in "abcd" else 2) for p in "abcdefghij"]
                         + [("k=3", p, 1 if p in "ab" else 2 if p in "cdef" else 3)
                            for p in "abcdefghij"])
    enriched = _enriched([("k=2", 1, "GO:M", 2), ("k=2", 2, "GO:N2", 1),
                          ("k=2", 1, "GO:E", 1),  # er, but er has too few proteins
                          ("k=3", 2, "GO:X", 1)])
    out = compartment_recovery(clusters, enriched, truth, TERMS)
    assert out.columns == list(RECOVERY_COLUMNS)
    got = {(r["cut"], r["compartment"]): r for r in out.iter_rows(named=True)}
    assert set(got) == {("k=2", "mito"), ("k=2", "nucleolus"), ("k=3", "mito"),
                        ("k=3", "nucleolus")}
    assert got["k=2", "mito"]["recovered"] and got["k=2", "mito"]["term_rank"] == 2
    assert got["k=2", "nucleolus"]["go_id"] == "GO:N2" and got["k=2", "nucleolus"]["n_in_cluster"] == 4
    assert not got["k=3", "mito"]["recovered"]  # split 2/2, neither cluster enriched in GO:M
    assert not got["k=3", "nucleolus"]["recovered"]
    assert got["k=3", "nucleolus"]["cluster_size"] == 4


def test_compartment_recovery_rejects_unknown_compartments():
    truth = pl.DataFrame({"protein": ["a"], "compartment": ["golgi"]})
    with pytest.raises(ValueError, match="golgi"):
        compartment_recovery(_clusters([("k=2", "a", 1)]), _enriched([]), truth, TERMS)
