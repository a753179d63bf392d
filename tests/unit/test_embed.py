"""Batched embedding, per-protein profiles and per-plate normalisation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from cellrep_ml.embed import (
    MAD_SCALE,
    embed_cells,
    normalize,
    protein_profiles,
    vector_series,
    vectors_of,
)
from cellrep_ml.errors import InputError
from cellrep_ml.io.crop_store import CropStore, CropStoreWriter
from cellrep_ml.models import build

N_CROPS = 21


def _store(path, n=N_CROPS, size=32, channels=("GFP", "DAPI"), seed=0) -> CropStore:
    rng = np.random.default_rng(seed)
    images = rng.random((n, len(channels), size, size)).astype(np.float16)
    with CropStoreWriter(path, channel_names=channels, crop_shape=(size, size),
                         with_masks=False, chunk_cells=8) as w:
        w.append(images[: n // 2])
        w.append(images[n // 2:])
    return CropStore.open(path)


@pytest.fixture
def store(tmp_path) -> CropStore:
    return _store(tmp_path / "crops.zarr")


@pytest.fixture
def pci_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("pci", "tiny", protein_channels=1, marker_channels=1)


# ----------------------------------------------------------------------------- embed_cells


def test_embed_cells_matches_features_in_eval_mode(store, pci_model):
    emb = embed_cells(pci_model, store, batch_size=5, device="cpu")
    pci_model.eval()
    with torch.no_grad():
        direct = pci_model.features(torch.from_numpy(store[:].astype(np.float32))).numpy()
    assert emb.dtype == np.float32
    assert emb.shape == (N_CROPS, direct.shape[1])
    np.testing.assert_allclose(emb, direct, rtol=1e-5, atol=1e-5)


def test_embed_cells_is_deterministic_and_batch_invariant(store, pci_model):
    a = embed_cells(pci_model, store, batch_size=4)
    b = embed_cells(pci_model, store, batch_size=4)
    c = embed_cells(pci_model, store, batch_size=256)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_bfloat16_is_close_to_float32_and_leaves_the_model_as_it_was(store, pci_model):
    exact = embed_cells(pci_model, store, batch_size=8)
    fast = embed_cells(pci_model, store, batch_size=8, precision="bfloat16")
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert np.linalg.norm(fast - exact) / np.linalg.norm(exact) < 0.02
    assert all(p.is_contiguous() for p in pci_model.parameters())
    np.testing.assert_array_equal(embed_cells(pci_model, store, batch_size=8), exact)
    with pytest.raises(ValueError, match="precision"):
        embed_cells(pci_model, store, precision="int8")


def test_float32_runs_channels_last_and_leaves_the_model_as_it_was(store, pci_model,
                                                                  monkeypatch):
    seen = []
    features = pci_model.features

    def spy(x, **kwargs):
        seen.append((x.is_contiguous(memory_format=torch.channels_last),
                     pci_model.source_encoder.blocks[1].conv.weight.is_contiguous(
                         memory_format=torch.channels_last)))
        return features(x, **kwargs)

    monkeypatch.setattr(pci_model, "features", spy)
    embed_cells(pci_model, store, batch_size=8)
    assert seen and all(x and w for x, w in seen)
    assert all(p.is_contiguous() for p in pci_model.parameters())


def test_embed_cells_restores_training_mode(store, pci_model):
    pci_model.train()
    embed_cells(pci_model, store, batch_size=8)
    assert pci_model.training


def test_embed_cells_indices_and_layer(store, pci_model):
    full = embed_cells(pci_model, store, batch_size=6)
    idx = np.array([20, 3, 3, 0, 11])
    np.testing.assert_allclose(embed_cells(pci_model, store, indices=idx, batch_size=2),
                               full[idx], rtol=1e-5, atol=1e-5)
    conv1 = embed_cells(pci_model, store, layer="conv1")
    with torch.no_grad():
        expected = pci_model.eval().features(torch.from_numpy(store[:].astype(np.float32)),
                                             layer="conv1").numpy()
    np.testing.assert_allclose(conv1, expected, rtol=1e-5, atol=1e-5)
    empty = embed_cells(pci_model, store, indices=np.array([], dtype=np.int64))
    assert empty.shape == (0, full.shape[1])


def test_embed_cells_selects_channels_by_name(tmp_path, pci_model):
    store = _store(tmp_path / "three.zarr", channels=("DAPI", "junk", "GFP"))
    picked = embed_cells(pci_model, store, channels=["GFP", "DAPI"])
    x = store[:][:, [2, 0]].astype(np.float32)
    pci_model.eval()
    with torch.no_grad():
        expected = pci_model.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(picked, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="not in the crop store"):
        embed_cells(pci_model, store, channels=["GFP", "mito"])


def test_embed_cells_resizes_to_the_model_input(tmp_path, pci_model):
    store = _store(tmp_path / "big.zarr", n=5, size=64)
    emb = embed_cells(pci_model, store)
    assert emb.shape[0] == 5 and np.isfinite(emb).all()


@pytest.mark.parametrize(("method", "overrides", "dim"), [
    ("cytoself", {}, 576),  # global encoding of the tiny config, crops resized 32 -> 48
    ("cbvae", {"dims": 2}, 16),  # reference model: encodes the marker channel only
    ("locclf", {}, 64),
])
def test_embed_cells_other_methods(store, method, overrides, dim):
    torch.manual_seed(0)
    model = build(method, "tiny", protein_channels=1, marker_channels=1, **overrides)
    emb = embed_cells(model, store, batch_size=8)
    assert emb.shape == (N_CROPS, dim)
    assert np.isfinite(emb).all()


def test_cbvae_reference_ignores_the_protein_channel(tmp_path):
    torch.manual_seed(0)
    model = build("cbvae", "tiny", protein_channels=1, marker_channels=1, dims=2)
    a = _store(tmp_path / "a.zarr", seed=1)
    b_images = a[:].copy()
    b_images[:, 0] = 0  # a different protein channel, the same marker
    with CropStoreWriter(tmp_path / "b.zarr", channel_names=a.channel_names,
                         crop_shape=(32, 32), with_masks=False) as w:
        w.append(b_images)
    np.testing.assert_allclose(embed_cells(model, a), embed_cells(model, CropStore.open(tmp_path / "b.zarr")),
                               rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- profiles


def _cells(proteins, splits, plates=None, cell_lines=None) -> pl.DataFrame:
    n = len(proteins)
    return pl.DataFrame({
        "cell_id": [f"c{i}" for i in range(n)],
        "dataset": ["ds"] * n,
        "cell_line": cell_lines or ["L"] * n,
        "plate": plates or ["p1"] * n,
        "protein": proteins,
        "split": splits,
    })


def test_protein_profiles_use_only_the_test_split():
    rng = np.random.default_rng(3)
    proteins = ["B", "A", "B", "A", "A", "B", "C"]
    splits = ["test", "test", "train", "test", "val", "test", "train"]
    cells = _cells(proteins, splits)
    emb = rng.standard_normal((7, 4)).astype(np.float32)
    emb[[2, 4, 6]] += 1000.0  # training/validation cells: would dominate any leak
    prof = protein_profiles(cells, emb)
    assert prof["protein"].to_list() == ["A", "A", "B", "B"]  # C has no test cell
    assert prof["stat"].to_list() == ["mean", "median", "mean", "median"]
    assert prof["n_cells"].to_list() == [2, 2, 2, 2]
    vec = vectors_of(prof, "features")
    np.testing.assert_allclose(vec[0], emb[[1, 3]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(vec[1], np.median(emb[[1, 3]], 0), rtol=1e-6)
    np.testing.assert_allclose(vec[2], emb[[0, 5]].mean(0), rtol=1e-6)
    assert prof.schema["features"] == pl.Array(pl.Float32, 4)
    assert set(prof["normalization"].to_list()) == {"none"}


def test_protein_profiles_median_is_robust_and_split_none_takes_all():
    cells = _cells(["A"] * 5, ["test"] * 5)
    emb = np.array([[1.0], [2.0], [3.0], [4.0], [1e6]], np.float32)
    prof = protein_profiles(cells, emb, stats=("median", "mean"), normalization="plate")
    assert prof["stat"].to_list() == ["median", "mean"]
    assert prof["normalization"].to_list() == ["plate", "plate"]
    np.testing.assert_allclose(vectors_of(prof, "features")[:, 0], [3.0, 200002.0], rtol=1e-6)
    all_cells = protein_profiles(_cells(["A", "A"], ["train", "test"]),
                                 np.array([[0.0], [2.0]]), split=None, stats=("mean",))
    assert all_cells["n_cells"].to_list() == [2]
    np.testing.assert_allclose(vectors_of(all_cells, "features"), [[1.0]])


def test_protein_profiles_errors():
    cells = _cells(["A", "B"], ["train", "train"])
    emb = np.zeros((2, 3), np.float32)
    with pytest.raises(InputError, match="no cell is in split 'test'"):
        protein_profiles(cells, emb)
    with pytest.raises(ValueError, match="stats"):
        protein_profiles(cells, emb, split=None, stats=("max",))
    with pytest.raises(ValueError, match="one row per cell"):
        protein_profiles(cells, emb[:1], split=None)


def test_protein_profiles_agree_with_a_groupby_on_many_cells():
    rng = np.random.default_rng(5)
    n = 3000
    proteins = [f"P{k}" for k in rng.integers(0, 37, n)]
    cells = _cells(proteins, ["test"] * n)
    emb = rng.standard_normal((n, 6)).astype(np.float32)
    prof = protein_profiles(cells, emb, stats=("mean",))
    expected = (pl.DataFrame({"protein": proteins}).with_columns(vector_series("v", emb))
                .with_columns([pl.col("v").arr.get(j).alias(f"v{j}") for j in range(6)])
                .group_by("protein").agg([pl.col(f"v{j}").mean() for j in range(6)])
                .sort("protein"))
    np.testing.assert_allclose(vectors_of(prof, "features"),
                               expected.select([f"v{j}" for j in range(6)]).to_numpy(),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- normalize


def _plates(seed=0):
    rng = np.random.default_rng(seed)
    # Same plate name in two cell lines: three different plates.
    plates = ["p1"] * 40 + ["p2"] * 30 + ["p1"] * 20
    lines = ["L1"] * 70 + ["L2"] * 20
    cells = _cells(["A"] * 90, ["test"] * 90, plates=plates, cell_lines=lines)
    emb = rng.standard_normal((90, 5)) * [1, 2, 3, 4, 5]
    emb[:40] += 10.0
    emb[40:70] = emb[40:70] * 3 - 7
    emb[70:] += 100.0
    emb[:, 4] = np.where(np.arange(90) < 40, 2.5, emb[:, 4])  # constant within plate 1
    return cells, emb.astype(np.float32), [slice(0, 40), slice(40, 70), slice(70, 90)]


def test_plate_normalization_has_zero_mean_unit_sd_per_plate():
    cells, emb, groups = _plates()
    z = normalize(emb, cells, method="plate")
    assert z.dtype == np.float32 and z.shape == emb.shape
    for g in groups:
        np.testing.assert_allclose(z[g].mean(0), 0.0, atol=1e-5)
        sd = z[g].std(0)
        expected = np.ones(5)
        if g.start == 0:
            expected[4] = 0.0  # a constant feature is centred, not divided by zero
        np.testing.assert_allclose(sd, expected, atol=1e-5)


def test_mad_normalization_is_robust_to_an_outlier():
    cells, emb, groups = _plates(1)
    z = normalize(emb, cells, method="mad")
    for g in groups[1:]:
        np.testing.assert_allclose(np.median(z[g], 0), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.median(np.abs(z[g]), 0) * MAD_SCALE, 1.0, rtol=1e-4)
    spiked = emb.copy()
    spiked[45, :] = 1e6  # one wild cell on plate 2
    others = np.r_[40:45, 46:70]
    z_mad = normalize(spiked, cells, method="mad")
    z_sd = normalize(spiked, cells, method="plate")
    # The robust scores of the other cells move by at most a rank step of the median;
    # the plain z-scores of every other cell collapse towards 0.
    assert np.abs(z_mad[others] - z[others]).max() < 1.0
    np.testing.assert_allclose(z_mad[others].std(0), z[others].std(0), rtol=0.2)
    assert np.abs(z_sd[others]).max() < 0.25
    assert normalize(emb, cells, method="plate")[others].std(0).min() > 0.8
    np.testing.assert_array_equal(z_mad[:40], z[:40])  # other plates untouched


def test_normalize_none_and_errors():
    cells, emb, _ = _plates()
    np.testing.assert_array_equal(normalize(emb.astype(np.float64), cells, "none"), emb)
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize(emb, cells, "zscore")
    bad = emb.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalize(bad, cells, "plate")
    with pytest.raises(ValueError, match="no 'plate' column"):
        normalize(emb, cells.drop("plate"), "mad")


def test_vectors_round_trip_through_a_column():
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    s = vector_series("v", x)
    assert s.dtype == pl.Array(pl.Float32, 3)
    df = pl.DataFrame([s])
    np.testing.assert_array_equal(vectors_of(df, "v"), x.astype(np.float32))
    np.testing.assert_array_equal(vectors_of(df.with_columns(pl.col("v").cast(pl.List(pl.Float32))), "v"),
                                  x.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        vector_series("v", np.zeros(3))


# ----------------------------------------------------------------------------- pipeline


def _partition(folder, cell_line, n, seed):
    from cellrep_ml.io.schema import CELL_INDEX_SCHEMA, conform

    folder.mkdir(parents=True)
    _store(folder / "crops.zarr", n=n, seed=seed)
    cells = pl.DataFrame({
        "cell_id": [f"ds/{cell_line}/p{i % 2}/A01/{i % 3}/{i}" for i in range(n)],
        "crop_index": list(range(n)), "dataset": "ds", "cell_line": cell_line,
        "plate": [f"p{i % 2}" for i in range(n)], "well": "A01", "field": [i % 3 for i in range(n)],
        "protein": [f"P{i % 3}" for i in range(n)],
        "centroid_z": 0.0, "centroid_y": 16.0, "centroid_x": 16.0, "area": 100,
        "mask_fraction": 0.2, "split": ["test" if i % 4 else "train" for i in range(n)],
    })
    conform(cells, CELL_INDEX_SCHEMA, name="cells").write_parquet(folder / "cells.parquet")
    return cells


def test_embed_partition_and_profile_dataset_fill_the_warehouse(tmp_path, pci_model):
    from cellrep_ml import warehouse as wh
    from cellrep_ml.embed import embed_partition, profile_dataset

    l1 = _partition(tmp_path / "crops" / "ds" / "l1", "L1", 12, seed=1)
    l2 = _partition(tmp_path / "crops" / "ds" / "l2", "L2", 8, seed=2)
    s1 = embed_partition(pci_model, tmp_path / "crops" / "ds" / "l1", model_name="pci",
                         model_version="1", batch_size=5)
    embed_partition(pci_model, tmp_path / "crops" / "ds" / "l2", model_name="pci",
                    model_version="1")
    assert (s1.dataset, s1.cell_line, s1.n_cells, s1.normalization) == ("ds", "L1", 12, "plate")
    assert s1.table == f"cell_embeddings_d{s1.dim}" and s1.cells_per_s > 0
    stored = wh.read_features("cell_embeddings", model_name="pci")
    assert stored.height == 20 and set(stored["normalization"]) == {"plate"}
    for (_, _), block in stored.group_by("cell_line", "plate"):
        z = vectors_of(block, "embedding")
        np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)

    prof = profile_dataset(model_name="pci", model_version="1", dataset="ds")
    assert (prof.n_proteins, prof.n_rows, prof.dim) == (3, 6, s1.dim)
    feats = wh.read_features("protein_features", model_name="pci")
    test = pl.concat([l1, l2]).filter(pl.col("split") == "test")
    expected = test.group_by("protein").len().sort("protein")["len"].to_list()
    assert feats.filter(pl.col("stat") == "mean")["n_cells"].to_list() == expected
    with pytest.raises(LookupError, match="normalization 'mad'"):
        profile_dataset(model_name="pci", model_version="1", dataset="ds", normalization="mad")
