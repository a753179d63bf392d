"""Baselines of Lu et al. (2019): classic features, the autoencoder, the random encoder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from skimage.feature import graycomatrix, graycoprops

from cellrep_ml.models import build, list_models
from cellrep_ml.models.baselines import HARALICK_PROPERTIES, _quantize, classic_features
from cellrep_ml.models.pci import ConvReLUBN


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture
def one_thread():
    """One intra-op thread for training loops (tiny nets; threads only contend here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def column(feats: np.ndarray, names: list[str], name: str) -> np.ndarray:
    return feats[:, names.index(name)]


# ---------------------------------------------------------------------------- classic features


def test_feature_names_and_shape():
    crops = np.random.default_rng(0).random((3, 3, 32, 32))
    feats, names = classic_features(crops, channel_names=["GFP", "DAPI", "tubulin"])
    assert feats.shape == (3, 3 + 2 + 6 * 5)
    assert names[:5] == ["protein_sum", "protein_mean", "protein_std",
                         "pearson_GFP_DAPI", "pearson_GFP_tubulin"]
    assert names[5:11] == [f"haralick_{p}_d1" for p in HARALICK_PROPERTIES]
    assert names[-1] == "haralick_ASM_d16"
    assert len(set(names)) == len(names)
    assert np.isfinite(feats).all()


def test_intensity_statistics_by_hand():
    crop = np.zeros((1, 2, 4, 4))
    crop[0, 0, :2] = 3.0  # half the pixels at 3, half at 0
    feats, names = classic_features(crop, distances=(1, 2))
    assert column(feats, names, "protein_sum")[0] == pytest.approx(24.0)
    assert column(feats, names, "protein_mean")[0] == pytest.approx(1.5)
    assert column(feats, names, "protein_std")[0] == pytest.approx(1.5)


def test_constant_crop_has_zero_std_and_no_texture():
    crops = np.full((2, 2, 32, 32), 0.7)
    crops[:, 1] = np.random.default_rng(0).random((2, 32, 32))
    feats, names = classic_features(crops)
    assert np.all(column(feats, names, "protein_std") == 0)
    assert np.all(column(feats, names, "pearson_ch0_ch1") == 0)  # undefined r reported as 0
    for d in (1, 2, 4, 8, 16):
        assert np.all(column(feats, names, f"haralick_contrast_d{d}") == 0)
        assert np.all(column(feats, names, f"haralick_dissimilarity_d{d}") == 0)
        np.testing.assert_allclose(column(feats, names, f"haralick_homogeneity_d{d}"), 1.0)
        np.testing.assert_allclose(column(feats, names, f"haralick_energy_d{d}"), 1.0)
        np.testing.assert_allclose(column(feats, names, f"haralick_correlation_d{d}"), 1.0)


def test_pearson_of_identical_and_inverted_channels():
    rng = np.random.default_rng(0)
    protein = rng.random((5, 32, 32))
    crops = np.stack([protein, protein, 1 - protein, rng.random((5, 32, 32))], axis=1)
    feats, names = classic_features(crops)
    np.testing.assert_allclose(column(feats, names, "pearson_ch0_ch1"), 1.0)
    np.testing.assert_allclose(column(feats, names, "pearson_ch0_ch2"), -1.0)
    assert np.all(np.abs(column(feats, names, "pearson_ch0_ch3")) < 0.1)
    only, only_names = classic_features(crops, marker_channels=[3])
    assert only.shape[1] == feats.shape[1] - 2 and "pearson_ch0_ch1" not in only_names


def test_checkerboard_contrast():
    """A 0/1 checkerboard quantises to levels 0 and 31.

    d = 1: horizontal and vertical neighbours always differ, (31 − 0)² = 961; the diagonals
    ((1, 1) and (1, −1)) match, 0; the angle average is (961 + 0 + 961 + 0) / 4 = 480.5.
    d = 2: every offset ((0, 2), (1, 1), (2, 0), (1, −1)) lands on the same colour: 0.
    """
    yy, xx = np.mgrid[:32, :32]
    board = ((yy + xx) % 2).astype(float)[None, None]  # (1, 1, 32, 32)
    feats, names = classic_features(board, marker_channels=[])
    assert column(feats, names, "haralick_contrast_d1")[0] == pytest.approx(480.5)
    assert column(feats, names, "haralick_contrast_d2")[0] == pytest.approx(0.0)
    assert column(feats, names, "haralick_dissimilarity_d1")[0] == pytest.approx(31 / 2)
    smooth = np.broadcast_to(np.linspace(0, 1, 32), (1, 1, 32, 32))
    smooth_feats, _ = classic_features(smooth, marker_channels=[])
    assert column(smooth_feats, names, "haralick_contrast_d1")[0] < 1.0


def test_haralick_matches_skimage():
    rng = np.random.default_rng(3)
    crops = rng.random((40, 2, 40, 40))
    crops[:, 0] = np.cumsum(crops[:, 0], axis=-1)  # some texture beyond noise
    feats, names = classic_features(crops)
    q = _quantize(crops[:, 0], 32)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    for i in (0, 17, 39):  # crops from both GLCM chunks
        glcm = graycomatrix(q[i].astype(np.uint8), [1, 2, 4, 8, 16], angles, levels=32,
                            symmetric=True, normed=True)
        for prop in HARALICK_PROPERTIES:
            expected = graycoprops(glcm, prop).mean(axis=1)  # (5 distances,)
            got = [feats[i, names.index(f"haralick_{prop}_d{d}")] for d in (1, 2, 4, 8, 16)]
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_batch_result_equals_per_crop_result():
    crops = np.random.default_rng(5).random((70, 2, 24, 24)).astype(np.float32)
    feats, _ = classic_features(crops, distances=(1, 3))
    for i in (0, 33, 69):
        single, _ = classic_features(crops[i : i + 1], distances=(1, 3))
        np.testing.assert_allclose(feats[i], single[0], rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"distances": (1, 32)}, "distances"), ({"protein_channel": 2}, "protein_channel"),
     ({"marker_channels": [5]}, "marker channels"), ({"channel_names": ["a"]}, "channel_names")],
)
def test_classic_features_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classic_features(np.zeros((1, 2, 32, 32)), **kwargs)


def test_classic_features_is_not_a_registered_model():
    assert {"autoencoder", "pci_random", "pci", "locclf"} <= set(list_models())
    assert "classic" not in list_models()


# ---------------------------------------------------------------------------- autoencoder


def test_autoencoder_parameter_count():
    """PCI source encoder (3,323,616 for 2 channels, as in PCI) + PCI decoder reading 256 channels.

    decoder: 9·256·256 + 256 = 590,080; 9·256·384 + 384 = 885,120; 9·384·384 + 384 = 1,327,488;
             9·384·256 + 256 = 884,992; 9·256·96 + 96 = 221,280; 1×1 96 → 2: 194
             = 3,909,154;  total 7,232,770.
    """
    model = build("autoencoder", "paper", protein_channels=1, marker_channels=1)
    assert n_trainable(model.encoder) == 3_323_616
    assert n_trainable(model) == 7_232_770


def test_autoencoder_shapes_and_loss():
    model = build("autoencoder", "tiny", protein_channels=1, marker_channels=2)
    x = torch.rand(2, 3, 32, 32)
    assert tuple(model(x).shape) == (2, 3, 32, 32)
    out = model.compute_loss({"crops": x})
    assert set(out) == {"loss", "mse"} and out["loss"].requires_grad
    torch.testing.assert_close(out["loss"], nn.functional.mse_loss(model(x), x))
    assert model.config.feature_layer == "conv3"
    with torch.no_grad():
        assert tuple(model.eval().features(x).shape) == (2, 48)
    paper = build("autoencoder", "paper", protein_channels=1, marker_channels=1).eval()
    with torch.no_grad():
        for layer, length in zip(paper.config.layer_names, (96, 256, 384, 384, 256), strict=True):
            assert tuple(paper.features(torch.rand(1, 2, 64, 64), layer=layer).shape) == (1, length)


def test_autoencoder_overfits_one_batch(one_thread):
    torch.manual_seed(0)
    model = build("autoencoder", "tiny", protein_channels=1, marker_channels=1)
    x = nn.functional.avg_pool2d(torch.rand(8, 2, 32, 32), 5, stride=1, padding=2)
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr, betas=model.config.betas)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = model.compute_loss({"crops": x})["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Adam with β1 = 0.5 on one batch is spiky; judge the best of the last steps.
    best_late = min(losses[-10:])
    assert best_late < losses[0] / 50
    assert best_late < x.var().item() / 4  # beyond the mean image: per-pixel detail


# ---------------------------------------------------------------------------- random encoder


def test_random_encoder_is_the_pci_source_encoder_untrained():
    model = build("pci_random", "paper", protein_channels=1, marker_channels=2)
    assert model.requires_training is False
    assert n_trainable(model) == 3_324_480  # PCI human source encoder
    assert all(type(b) is ConvReLUBN for b in model.encoder.blocks)
    assert model.config.feature_layer == "conv3"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert tuple(model(x).shape) == (2, 256, 16, 16)
        for layer, length in zip(model.config.layer_names, (96, 256, 384, 384, 256), strict=True):
            assert tuple(model.eval().features(x, layer=layer).shape) == (2, length)
    loss = model.compute_loss({"crops": x})
    assert loss["loss"].item() == 0.0


def test_random_encoder_weights_depend_on_init_seed_only():
    torch.manual_seed(123)
    a = build("pci_random", "tiny", protein_channels=1, marker_channels=1)
    torch.manual_seed(456)
    b = build("pci_random", "tiny", protein_channels=1, marker_channels=1)
    c = build("pci_random", "tiny", protein_channels=1, marker_channels=1, init_seed=1)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.encoder.blocks[0].conv.weight, c.encoder.blocks[0].conv.weight)
    # Building it does not disturb the caller's random stream.
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build("pci_random", "tiny", protein_channels=1, marker_channels=1)
    assert torch.equal(torch.rand(3), expected)


def test_random_encoder_features_are_max_pooled_pre_bn():
    model = build("pci_random", "tiny", protein_channels=1, marker_channels=1).eval()
    x = torch.rand(3, 2, 32, 32)
    with torch.no_grad():
        conv1 = nn.functional.relu(model.encoder.blocks[0].conv(x))
        torch.testing.assert_close(model.features(x, layer="conv1"), conv1.amax(dim=(-2, -1)))


@pytest.mark.parametrize("name", ["autoencoder", "pci_random"])
def test_configs_are_json_serialisable(name):
    model = build(name, "tiny", protein_channels=1, marker_channels=1)
    fields = json.loads(json.dumps(dataclasses.asdict(model.config)))
    assert "layer_names" not in fields
    assert build(name, "tiny", **fields).config == model.config
    with pytest.raises(ValueError, match="unknown"):
        build(name, "tiny", protein_channels=1, marker_channels=1, target_stages=((4,),))
