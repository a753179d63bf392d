"""β-VAE analyses on crops (Donovan-Maiye 2022): rate–distortion sweep, simulated drug, coupling.

The crops are planted. For coupling and imputation each cell is a nuclear disc at a random
place and size, and each protein a structure with a known relation to it — a copy of the
nucleus (coupled), a rim around it (coupled), or a spot at a random place (uncoupled).
For the simulated drug the nucleus is fixed and the structures vary in one property
each (brightness, size): a β-VAE encodes only the variation it was trained on, so that is
the variation a drug can be seen along (Section 4.5).

Models are trained briefly with the real engine. β is below the paper's 0.5 because the
summed squared error of a 32 × 32 crop is ~400× smaller than of a 128 × 96 × 64 volume:
the same β would price every nat of latent information far higher here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cellrep_ml.errors import InputError
from cellrep_ml.evaluate import cbvae as ev
from cellrep_ml.io.crop_store import CropStoreWriter
from cellrep_ml.io.schema import CELL_INDEX_SCHEMA
from cellrep_ml.models import cbvae_analysis as ana
from cellrep_ml.models.cbvae import cbvae

SIZE = 32
PROTEINS = ("NUC", "RIM", "SPOT")
DRUG_PROTEINS = ("DIM", "SIZE")
FAST = {"batch_size": 16, "lr": 3e-3, "seed": 0, "device": "cpu"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One compute thread: tiny models on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _disc(yy, xx, cy, cx, r):
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).astype(np.float32)


def write_planted(root: Path, *, proteins: tuple[str, ...] = PROTEINS,
                  cells_per_protein: int = 100, fixed_nucleus: bool = False, seed: int = 0) -> Path:
    """One crops partition: GFP (the structure) and DAPI (the nucleus), splits by field.

    ``fixed_nucleus``: every nucleus the same disc in the centre, so all variation between
    cells is in the structure channel.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images, rows = [], []
    for protein in proteins:
        for i in range(cells_per_protein):
            cy, cx = rng.uniform(11, 21, 2)
            r = rng.uniform(4, 7)
            if fixed_nucleus:
                cy, cx, r = 16.0, 16.0, 5.0
            nucleus = _disc(yy, xx, cy, cx, r)
            if protein == "NUC":
                structure = nucleus.copy()
            elif protein == "RIM":
                structure = _disc(yy, xx, cy, cx, r + 3) - _disc(yy, xx, cy, cx, r + 1)
            elif protein.startswith("SPOT"):  # anywhere, any size and brightness: unrelated to the nucleus
                structure = _disc(yy, xx, *rng.uniform(8, 24, 2), rng.uniform(3, 7))
                structure *= rng.uniform(0.5, 1.0)
            elif protein == "DIM":  # a central disc whose brightness is all that varies
                structure = _disc(yy, xx, 16.0, 16.0, 7.0) * rng.uniform(0.2, 0.6)
            else:  # SIZE: a central disc whose radius is all that varies
                structure = _disc(yy, xx, 16.0, 16.0, rng.uniform(5, 10))
            images.append(np.stack([structure, nucleus]))
            field = i // 4
            split = ("train", "train", "train", "val", "test")[field % 5]
            rows.append({"cell_id": f"toy/a/p1/{protein}/{field}/{i}", "crop_index": len(rows),
                         "dataset": "toy", "cell_line": "a", "plate": "p1", "well": protein,
                         "field": field, "protein": protein, "centroid_z": 0.0,
                         "centroid_y": float(cy), "centroid_x": float(cx), "area": 50,
                         "mask_fraction": 0.2, "split": split})
    out = root / "toy" / "a"
    out.mkdir(parents=True)
    roles = {"protein": "GFP", "nucleus": "DAPI", "markers": [], "segment_on": "DAPI"}
    with CropStoreWriter(out / "crops.zarr", channel_names=["GFP", "DAPI"],
                         crop_shape=(SIZE, SIZE), with_masks=False,
                         attrs={"dataset": "toy", "roles": roles}) as w:
        w.append(np.asarray(images, np.float32))
    pl.DataFrame(rows, schema=CELL_INDEX_SCHEMA).write_parquet(out / "cells.parquet")
    return out


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> list[Path]:
    return [write_planted(tmp_path_factory.mktemp("planted"))]


@pytest.fixture(scope="module")
def structure_model(crops, tmp_path_factory):
    """The structure model on the coupling crops (~30 s on one CPU thread)."""
    model, _ = ev.train_cbvae(crops, tmp_path_factory.mktemp("runs") / "s", kind="structure",
                              steps=200, model_overrides={"beta": 0.2}, **FAST)
    return model


@pytest.fixture(scope="module")
def cells(crops, structure_model):
    return ev.load_cells(crops, structure_model.config.input_shape, split="test")


@pytest.fixture(scope="module")
def drug_cells(tmp_path_factory):
    """The drug crops' test cells and a structure model trained on them (~17 s)."""
    root = tmp_path_factory.mktemp("drug")
    crops = [write_planted(root, proteins=DRUG_PROTEINS, cells_per_protein=120,
                           fixed_nucleus=True)]
    model, _ = ev.train_cbvae(crops, root / "s", kind="structure", steps=150,
                              model_overrides={"beta": 0.02}, **FAST)
    return model, ev.load_cells(crops, model.config.input_shape, split="test")


# --------------------------------------------------------------------------- the drug


def _spread(x: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted mean squared distance from the centroid, per image (pixels²)."""
    w = x[:, 0]
    yy, xx = torch.meshgrid(torch.arange(w.shape[1]).float(),
                            torch.arange(w.shape[2]).float(), indexing="ij")
    total = w.sum(dim=(1, 2))
    cy = (w * yy).sum(dim=(1, 2)) / total
    cx = (w * xx).sum(dim=(1, 2)) / total
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    return (w * d2).sum(dim=(1, 2)) / total


def test_shrink_condenses_about_the_centroid_and_leaves_the_input():
    x = torch.zeros(3, 1, SIZE, SIZE)
    x[0, 0, 6:22, 8:20] = 1.0
    x[1, 0, 4:12, 4:28] = 0.5
    x[2, 0, 10:30, 2:10] = 1.0
    before = x.clone()
    y = ana.perturb_structures(x, "shrink", 0.5)
    assert torch.equal(x, before)
    # Contracting to half the extent quarters the second moment (bilinear sampling blurs a little).
    assert torch.allclose(_spread(y) / _spread(x), torch.full((3,), 0.25), atol=0.05)
    assert torch.allclose(ana._centroids(y), ana._centroids(x), atol=0.02)


def test_shift_moves_and_brighten_scales():
    x = torch.zeros(2, 1, SIZE, SIZE)
    x[:, 0, 12:20, 4:12] = 0.6
    shifted = ana.perturb_structures(x, "shift", 0.5)  # a quarter of the width: 8 px
    dx = (ana._centroids(shifted) - ana._centroids(x))[:, 0] * SIZE / 2
    assert torch.allclose(dx, torch.full((2,), 8.0), atol=0.1)
    bright = ana.perturb_structures(x, "brighten", 1.0)
    assert bright.max() == 1.0 and torch.allclose(bright[x > 0], torch.ones(1))
    volume = torch.zeros(1, 1, 8, SIZE, SIZE)
    volume[0, 0, 2:6, 8:24, 8:24] = 1.0
    # 3D: half the extent along z, y and x keeps an eighth of the voxels.
    assert float(ana.perturb_structures(volume, "shrink", 0.5).sum()) == pytest.approx(float(volume.sum()) / 8, rel=0.05)


@pytest.mark.parametrize("kind, strength, message", [
    ("melt", 0.5, "kind must be one of"), ("shrink", 1.0, r"in \(0, 1\)"),
    ("shift", -0.1, "positive")])
def test_perturbation_rejects_bad_arguments(kind, strength, message):
    with pytest.raises(ValueError, match=message):
        ana.perturb_structures(torch.zeros(1, 1, 8, 8), kind, strength)


def test_treatment_split_is_exact_and_seeded():
    a = ana.treatment_split(11, fraction=0.5, seed=3)
    assert a.dtype == bool and a.sum() == 6 and np.array_equal(a, ana.treatment_split(11, seed=3))
    assert not np.array_equal(a, ana.treatment_split(11, seed=4))
    assert ana.treatment_split(2, fraction=0.01).sum() == 1
    with pytest.raises(ValueError, match="at least 2"):
        ana.treatment_split(1)


@pytest.mark.slow
@pytest.mark.parametrize("kind, detected", [
    ("shrink", {"DIM": True, "SIZE": True}),
    # SIZE discs are already at full intensity: brightening clips to the same images.
    ("brighten", {"DIM": True, "SIZE": False}),
])
def test_simulated_drug_is_detected_and_the_sham_is_not(drug_cells, kind, detected):
    model, cells = drug_cells
    table = ev.perturbation_table(model, cells, kind=kind, strength=0.5 if kind == "shrink" else 1.0,
                                  n_permutations=2000, seed=0)
    assert set(table["structure"]) == set(DRUG_PROTEINS)
    drug = dict(table.filter(pl.col("test") == "drug").select("structure", "p_bonferroni").iter_rows())
    sham = table.filter(pl.col("test") == "sham")
    assert {s: p < 0.05 for s, p in drug.items()} == detected, table
    assert (sham["p_value"] > 0.05).all(), sham
    assert table.filter(pl.col("test") == "drug")["n_treated"].to_list() == [12, 12]


# --------------------------------------------------------------------------- coupling, imputation


@pytest.mark.slow
def test_coupling_finds_the_nucleus_copy_and_not_the_random_spot(structure_model, cells):
    structure = structure_model
    channels = ev.reference_channel_roles(cells)
    assert channels == {"nucleus": 0}
    table = ev.coupling_table(structure, cells, channels, n_swaps=6, n_samples=2, seed=0)
    kappa = dict(table.select("structure", "value").iter_rows())
    assert set(table["metric"]) == {"kappa_nucleus"}
    # Swapping in another cell's nucleus ruins a copy of the nucleus, not a randomly placed spot.
    assert kappa["NUC"] > 0.5 and kappa["RIM"] > 0.3
    assert abs(kappa["SPOT"]) < 0.1


@pytest.mark.slow
def test_imputation_puts_the_own_structure_closest(structure_model, cells):
    table = ev.imputation_table(structure_model, cells, max_cells=8)
    frac = dict(table.select("structure", "own_better_fraction").iter_rows())
    assert frac["NUC"] == 1.0 and frac["RIM"] == 1.0 and frac["SPOT"] >= 0.75
    assert (table["own_sse"] < table["other_sse"]).all()


def test_membrane_and_nucleus_are_found_by_role_and_name():
    def fake(names, nucleus):
        return ev.CBVAECells({}, pl.DataFrame(), [], names, {"nucleus": nucleus})

    assert ev.reference_channel_roles(fake(["DNA", "membrane"], "DNA")) == {"nucleus": 0, "membrane": 1}
    assert ev.reference_channel_roles(fake(["Hoechst"], "Hoechst")) == {"nucleus": 0}
    assert ev.reference_channel_roles(fake(["DNA", "CellMask"], "DNA"), "CellMask") == {
        "nucleus": 0, "membrane": 1}
    with pytest.raises(InputError, match="membrane channel"):
        ev.reference_channel_roles(fake(["DNA"], "DNA"), "CellMask")


# --------------------------------------------------------------------------- rate and distortion


def test_rate_distortion_is_the_unweighted_elbo():
    model = cbvae("tiny", marker_channels=1, dims=2, kind="reference").eval()
    x = torch.rand(6, 1, SIZE, SIZE)
    rd = ana.rate_distortion(model, [{"reference": x}], n_samples=3, seed=5)
    elbo = model.elbo({"reference": x}, 3, weighted=False,
                      generator=torch.Generator().manual_seed(5))
    assert -(rd.rate + rd.distortion) == pytest.approx(float(elbo.mean()), rel=1e-5)
    assert rd.kl_per_dimension.shape == (16,) and rd.rate == pytest.approx(rd.kl_per_dimension.sum())
    assert rd.n_images == 6


@pytest.mark.slow
def test_sweep_trades_rate_for_distortion(crops, tmp_path):
    sweep = ev.rate_distortion_sweep(crops, [0.02, 0.98], steps=120, out=tmp_path, **FAST)
    assert sweep.columns == ["beta", "rate", "distortion", "elbo", "active_dims", "steps", "n_cells"]
    low, high = sweep.sort("beta").iter_rows(named=True)
    # Section 4.3: as β grows the rate falls, distortion rises, fewer dimensions stay active.
    assert low["rate"] > 3 * high["rate"]
    assert low["distortion"] < high["distortion"]
    assert low["active_dims"] > high["active_dims"]
    assert low["n_cells"] == 60 and (tmp_path / "beta-0.02" / "model.pt").is_file()


def test_sweep_rejects_bad_betas(crops):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ev.rate_distortion_sweep(crops, [0.5, 1.5])
    with pytest.raises(InputError, match="no β"):
        ev.rate_distortion_sweep(crops, [])


@pytest.mark.slow
def test_figures_are_png(structure_model, cells):
    ranking = ev.latent_ranking(structure_model, cells)
    assert ranking["rank"].to_list() == list(range(1, 17))
    assert ranking["mad"].is_sorted(descending=True)
    sweep = pl.DataFrame({"beta": [0.1, 0.9], "rate": [5.0, 1.0], "distortion": [10.0, 20.0]})
    coupling = pl.DataFrame({"structure": ["A", "A", "A"],
                             "metric": ["kappa_nucleus", "kappa_membrane", "differential"],
                             "value": [0.1, 0.3, 0.5], "n_cells": [4, 4, 4]})
    for png in (ev.latent_mad_png(ranking), ev.rate_distortion_png(sweep),
                ev.coupling_png(coupling), ev.imputation_gallery_png(structure_model, cells, n_cells=2)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
