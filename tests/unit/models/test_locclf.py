"""DeepLoc localization classifier (Razdaibiedina & Brechalov 2022): parity, options, training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from cellrep_ml.models import build
from cellrep_ml.models.locclf import LocalizationClassifier, augment, standardize


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def paper() -> LocalizationClassifier:
    return build("locclf", "paper", protein_channels=1, marker_channels=1, n_classes=17)


@pytest.fixture
def one_thread():
    """One intra-op thread for training loops (tiny nets; threads only contend here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_parameter_count_of_paper_config(paper):
    """Same padding, 64×64 crops, 2 channels, 17 classes; convs have no bias (BN follows).

    conv weights 9·(2·64 + 64·64 + 64·128 + 128·128 + 128·256 + 3·256·256)
               = 9·(128 + 4,096 + 8,192 + 16,384 + 32,768 + 196,608) = 9·258,176 = 2,323,584
    BN γ, β    2·(64 + 64 + 128 + 128 + 4·256) = 2·1,408                       =     2,816
    fc1        (8·8·256)·512 + 512 = 16,384·512 + 512                         = 8,389,120
    fc2        512·512 + 512                                                  =   262,656
    fc3        512·17 + 17                                                    =     8,721
    total                                                                     = 10,986,897
    """
    assert n_trainable(paper) == 10_986_897


def test_parameter_count_of_valid_padding_variant():
    """Valid padding: 64 → 60 → 30 → 26 → 13 → 5 → 2, so fc1 reads 2·2·256 = 1,024 values.

    2,323,584 + 2,816 + (1,024·512 + 512 = 524,800) + 262,656 + 8,721 = 3,122,577.
    """
    model = build("locclf", "paper", protein_channels=1, marker_channels=1, padding="valid")
    assert model.map_size == 2
    assert n_trainable(model) == 3_122_577


def test_layer_order_and_shapes(paper):
    convs = [m for m in paper.conv if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    kinds = [type(m) for m in paper.conv]
    # conv → BN → ReLU for each of the 8 convs, a pool after each stage.
    assert kinds[:7] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 + [nn.MaxPool2d]
    assert kinds.count(nn.MaxPool2d) == 3 and kinds[-1] is nn.MaxPool2d
    model = paper.eval()
    with torch.no_grad():
        for side in (64, 60):  # full crops and DeepLoc's random 60×60 crops
            x = torch.randn(2, 2, side, side)
            assert tuple(model.conv(x).shape) == (2, 256, 8, 8)
            assert tuple(model(x).shape) == (2, 17)
        x = torch.randn(3, 2, 64, 64)
        assert tuple(model.features(x).shape) == (3, 512)
        assert tuple(model.features({"crops": x}, layer="fc1").shape) == (3, 512)
        assert (model.features(x) >= 0).all()  # after ReLU


def test_features_are_penultimate_layer(paper):
    model = paper.eval()
    x = torch.randn(2, 2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.head(model.features(x)), model(x))


def test_wrong_input_size_is_reported(paper):
    with pytest.raises(ValueError, match="expect 8×8"):
        paper(torch.randn(1, 2, 48, 48))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        paper(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="layer"):
        paper.features(torch.randn(1, 2, 64, 64), layer="conv8")


def test_standardize_per_crop_per_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 16, 16, generator=g) * torch.tensor([1.0, 50.0]).view(1, 2, 1, 1) + 3
    x[1, 1] = 7.0  # a constant channel
    z = standardize(x)
    mean = z.mean(dim=(-2, -1))
    var = z.var(dim=(-2, -1), correction=0)
    torch.testing.assert_close(mean, torch.zeros(4, 2), atol=1e-5, rtol=0)
    expected_var = torch.ones(4, 2)
    expected_var[1, 1] = 0
    torch.testing.assert_close(var, expected_var, atol=1e-4, rtol=0)
    assert torch.all(z[1, 1] == 0)


def test_standardisation_makes_features_intensity_invariant():
    model = build("locclf", "tiny", protein_channels=1, marker_channels=1).eval()
    x = torch.rand(3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.features(5 * x + 2), atol=1e-4, rtol=1e-4)
        raw = build("locclf", "tiny", protein_channels=1, marker_channels=1, standardize=False).eval()
        assert not torch.allclose(raw.features(x), raw.features(5 * x + 2), atol=1e-3)


def _dihedral(crop: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(c, k, dims=(-2, -1)) for c in (crop, crop.flip(-1)) for k in range(4)]


def test_augment_applies_one_dihedral_transform_per_crop():
    x = torch.randn(64, 2, 8, 8)
    out = augment(x, torch.Generator().manual_seed(1))
    seen = set()
    for crop, result in zip(x, out, strict=True):
        matches = [i for i, t in enumerate(_dihedral(crop)) if torch.equal(t, result)]
        assert len(matches) == 1  # the same transform on both channels
        seen.add(matches[0])
    assert seen == set(range(8))
    # Deterministic given the generator's seed.
    torch.testing.assert_close(out, augment(x, torch.Generator().manual_seed(1)))


def test_augment_options_and_dict_batches():
    x = torch.randn(16, 2, 8, 8)
    label = torch.arange(16)
    batch = {"crops": x, "label": label}
    same = augment(batch, torch.Generator().manual_seed(0), flips=False, rotations=False)
    assert torch.equal(same["crops"], x) and same["label"] is label
    model = build("locclf", "tiny", protein_channels=1, marker_channels=1, augment_flips=False)
    out = model.augment(batch, torch.Generator().manual_seed(0))["crops"]
    for crop, result in zip(x, out, strict=True):  # rotations only: never a mirror image
        assert any(torch.equal(torch.rot90(crop, k, dims=(-2, -1)), result) for k in range(4))
    with pytest.raises(ValueError, match="square"):
        augment(torch.randn(2, 2, 8, 6))


def test_training_options_in_config(paper):
    c = paper.config
    assert c.lr_grid == (1e-3, 6e-4, 3e-4, 1e-4, 5e-5)
    assert (c.epochs, c.seeds, c.patience) == (30, 3, 30)
    assert c.standardize and c.augment_flips and c.augment_rotations
    fields = json.loads(json.dumps(dataclasses.asdict(c)))
    assert build("locclf", "paper", **fields).config == c


def test_compute_loss_is_cross_entropy():
    model = build("locclf", "tiny", protein_channels=1, marker_channels=2, n_classes=5)
    batch = {"crops": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 4, 2])}
    out = model.compute_loss(batch)
    assert set(out) == {"loss", "cross_entropy"}
    assert out["loss"].requires_grad and not out["cross_entropy"].requires_grad
    expected = nn.functional.cross_entropy(model(batch["crops"]), batch["label"])
    torch.testing.assert_close(out["loss"], expected)


def test_tiny_model_overfits_one_batch(one_thread):
    torch.manual_seed(0)
    model = build("locclf", "tiny", protein_channels=1, marker_channels=1, n_classes=4)
    batch = {"crops": torch.rand(16, 2, 32, 32), "label": torch.arange(16) % 4}
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = model.compute_loss(batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 20
    model.eval()
    with torch.no_grad():
        assert (model(batch["crops"]).argmax(1) == batch["label"]).all()
