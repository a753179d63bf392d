"""Feature spectrum (Kobayashi 2021): code histograms, code ordering, clusters, compartments."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cellrep_ml.evaluate import code_histograms, compartment_spectra, feature_spectrum

N_CODES = 64


def _two_group_codes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Crops of 8 proteins (25 x 25 codes): proteins A* favour codes 0-31, B* codes 32-63."""
    rng = np.random.default_rng(seed)
    codes, proteins = [], []
    for p in range(8):
        group = p % 2
        weight = rng.uniform(0.5, 0.9)  # per-protein preference, so code columns co-vary
        probs = np.full(N_CODES, (1 - weight) / N_CODES)
        probs[group * 32:(group + 1) * 32] += weight / 32
        for _ in range(3):
            codes.append(rng.choice(N_CODES, size=(25, 25), p=probs))
            proteins.append(f"{'AB'[group]}{p}")
    return np.stack(codes), np.array(proteins)


def test_code_histograms_count_every_code() -> None:
    codes = np.array([[[0, 1], [1, 3]], [[2, 2], [2, 2]]])
    h = code_histograms(codes, n_codes=4)
    np.testing.assert_array_equal(h, [[1, 2, 0, 1], [0, 0, 4, 0]])
    with pytest.raises(ValueError, match="codes out of range"):
        code_histograms(codes, n_codes=3)


def test_spectrum_groups_co_used_codes() -> None:
    codes, proteins = _two_group_codes()
    fs = feature_spectrum(codes, proteins, n_codes=N_CODES, n_clusters=2)
    assert fs.histograms.shape == (8, N_CODES)
    np.testing.assert_allclose(fs.histograms.sum(axis=1), 625.0)  # mean of per-crop counts
    assert sorted(fs.order.tolist()) == list(range(N_CODES))
    # The two code groups are the two top-level clusters, each contiguous on the axis.
    assert len(set(fs.clusters[:32])) == 1 and len(set(fs.clusters[32:])) == 1
    assert fs.clusters[0] != fs.clusters[32]
    axis_clusters = fs.clusters[fs.order]
    assert (np.diff(axis_clusters) != 0).sum() == 1
    assert axis_clusters[0] == 1  # numbered along the axis
    assert fs.correlation[0, 1] > 0.5 and fs.correlation[0, 40] < -0.5


def test_histogram_input_equals_code_input_and_linkage_choice() -> None:
    codes, proteins = _two_group_codes(1)
    a = feature_spectrum(codes, proteins, n_codes=N_CODES, n_clusters=2)
    b = feature_spectrum(code_histograms(codes, n_codes=N_CODES), proteins, n_clusters=2)
    np.testing.assert_array_equal(a.order, b.order)
    c = feature_spectrum(codes, proteins, n_codes=N_CODES, n_clusters=2, distance="one_minus_r")
    assert len(set(c.clusters[:32])) == 1 and c.clusters[0] != c.clusters[32]


def test_unused_codes_do_not_poison_the_correlation() -> None:
    codes, proteins = _two_group_codes(2)
    fs = feature_spectrum(codes, proteins, n_codes=N_CODES + 8, n_clusters=3)
    assert np.isfinite(fs.correlation).all()
    np.testing.assert_array_equal(fs.correlation[N_CODES:, :N_CODES], 0.0)


def test_tables_and_compartment_spectra() -> None:
    codes, proteins = _two_group_codes(3)
    fs = feature_spectrum(codes, proteins, n_codes=N_CODES, n_clusters=2)
    codes_t = fs.codes_table()
    assert codes_t.height == N_CODES and codes_t["code"].to_list() == fs.order.tolist()
    assert fs.protein_table().height == 8 * N_CODES
    labels = pl.DataFrame({"protein": fs.proteins,
                           "label": ["groupA" if p.startswith("A") else "groupB"
                                     for p in fs.proteins]})
    comp = compartment_spectra(fs, labels)
    a = comp.filter(pl.col("label") == "groupA").sort("position")
    rows = [i for i, p in enumerate(fs.proteins) if p.startswith("A")]
    np.testing.assert_allclose(a["value"].to_numpy(), fs.spectra[rows].mean(axis=0))
    assert a["n_proteins"][0] == 4
    # Group A's mass sits on its own cluster of codes.
    own = a.filter(pl.col("code") < 32)["value"].sum()
    assert own > 2 * a.filter(pl.col("code") >= 32)["value"].sum()


def test_bad_arguments_rejected() -> None:
    codes, proteins = _two_group_codes()
    with pytest.raises(ValueError, match="n_clusters"):
        feature_spectrum(codes, proteins, n_codes=N_CODES, n_clusters=0)
    with pytest.raises(ValueError, match="proteins"):
        feature_spectrum(codes, np.array(["x"] * len(proteins)), n_codes=N_CODES)
    with pytest.raises(ValueError, match="distance"):
        feature_spectrum(codes, proteins, n_codes=N_CODES, distance="ward")
