"""Paired cell inpainting (Lu et al. 2019): parity with the authors' code, and the pair sampler."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cellrep_ml.models import build
from cellrep_ml.models.pairing import PairSampler, apply_flips
from cellrep_ml.models.pci import (
    ConvReLUBN,
    PairedCellInpainting,
    PCIConfig,
    upsample2x_conv3x3,
)


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def yeast() -> PairedCellInpainting:
    return build("pci", "paper", protein_channels=1, marker_channels=1)


@pytest.fixture(scope="module")
def human() -> PairedCellInpainting:
    return build("pci", "paper", protein_channels=1, marker_channels=2)


# ---------------------------------------------------------------------------- parity


def test_parameter_counts_match_authors_code(yeast, human):
    """Trainable counts of the released Keras models; BN running mean/var add 2 per channel."""
    assert n_trainable(yeast) == 7_320_609
    assert n_trainable(human) == 7_321_617
    for model, with_stats in ((yeast, 7_323_521), (human, 7_324_529)):
        stats = sum(
            b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
        )
        assert n_trainable(model) + stats == with_stats


def test_layer_shapes_for_64px_input(human):
    model = human.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        acts = model.source_encoder.activations(x)
        target_code = model.target_encoder(x[:, 1:])
        pred = model(x, x[:, 1:])
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "conv1": (2, 96, 64, 64),
        "conv2": (2, 256, 32, 32),
        "conv3": (2, 384, 16, 16),
        "conv4": (2, 384, 16, 16),
        "conv5": (2, 256, 16, 16),
    }
    assert tuple(model.source_encoder(x).shape) == (2, 256, 16, 16)
    assert tuple(target_code.shape) == (2, 32, 16, 16)
    assert tuple(pred.shape) == (2, 1, 64, 64)


@pytest.mark.parametrize(
    ("layer", "length"), [("conv1", 96), ("conv2", 256), ("conv3", 384), ("conv4", 384), ("conv5", 256)]
)
def test_feature_lengths_per_layer(yeast, layer, length):
    with torch.no_grad():
        feats = yeast.eval().features(torch.rand(3, 2, 64, 64), layer=layer)
    assert tuple(feats.shape) == (3, length)


def test_default_feature_layer_follows_the_paper(yeast, human):
    """conv4 for yeast (Table 1), conv3 for human (Fig 2B); the config can override it."""
    assert yeast.config.feature_layer == "conv4"
    assert human.config.feature_layer == "conv3"
    x = torch.rand(2, 2, 64, 64)
    with torch.no_grad():
        assert yeast.eval().features({"crops": x}).shape[1] == 384
    model = build("pci", "tiny", protein_channels=1, marker_channels=1, feature_layer="conv5")
    assert model.config.feature_layer == "conv5"


def test_features_are_max_pooled_relu_before_bn():
    torch.manual_seed(0)
    model = build("pci", "tiny", protein_channels=1, marker_channels=1).eval()
    # Non-trivial BN statistics so "before BN" and "after BN" differ.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
    x = torch.rand(4, 2, 32, 32)
    block1, block2 = model.source_encoder.blocks[:2]
    with torch.no_grad():
        conv1 = F.relu(block1.conv(x))  # (4, 16, 32, 32)
        conv2 = F.relu(block2.conv(F.max_pool2d(block1.bn(conv1), 2)))
        torch.testing.assert_close(model.features(x, layer="conv1"), conv1.amax(dim=(-2, -1)))
        torch.testing.assert_close(model.features(x, layer="conv2"), conv2.amax(dim=(-2, -1)))
        after_bn = block1.bn(conv1).amax(dim=(-2, -1))
    assert not torch.allclose(model.features(x, layer="conv1"), after_bn)


def test_relu_then_batch_norm_in_every_encoder_block(yeast):
    blocks = [m for m in yeast.modules() if isinstance(m, ConvReLUBN)]
    assert len(blocks) == 5 + 3  # source + target encoders
    for block in blocks:
        kinds = [type(m) for m in block.children()]
        assert kinds == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
        assert block.bn.momentum == pytest.approx(0.01) and block.bn.eps == pytest.approx(1e-3)
        assert block.conv.kernel_size == (3, 3) and block.conv.padding == (1, 1)
    # The decoder has no batch norm and a linear 1×1 output.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in yeast.decoder.modules())
    assert yeast.decoder.layers[-1].kernel_size == (1, 1)
    # Functional check: BN last means a training-mode block output is centred (has negatives);
    # with BN before ReLU it would be >= 0.
    model = build("pci", "tiny", protein_channels=1, marker_channels=1).train()
    out, pre_bn = model.source_encoder.blocks[0](torch.rand(8, 2, 32, 32))
    assert (pre_bn >= 0).all()
    assert (out < 0).any()
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("shape", "out"), [((2, 5, 4, 6), 3), ((1, 1, 1, 1), 2), ((3, 8, 5, 3), 7)])
def test_fused_upsample_conv_is_upsample_then_conv(shape, out, memory_format):
    """Same function and same gradients as nearest ×2 upsampling then a 3×3 same conv
    (float64: equal to rounding), square or not, either memory layout."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    w = torch.randn(out, shape[1], 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(out, generator=g, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    got = upsample2x_conv3x3(x, w, b)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), grad),
                    torch.autograd.grad(expected, (x, w, b), grad), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    no_bias = upsample2x_conv3x3(x, w, None)
    torch.testing.assert_close(no_bias, expected - b.view(1, -1, 1, 1), rtol=1e-12, atol=1e-12)


def test_decoder_forward_is_its_sequential_layers():
    """The fused forward computes what running ``decoder.layers`` in order computes."""
    torch.manual_seed(0)
    model = build("pci", "tiny", protein_channels=1, marker_channels=2).double()
    z = torch.rand(3, model.decoder.layers[0].in_channels, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.decoder(z), model.decoder.layers(z),
                                   rtol=1e-12, atol=1e-12)
    # The module list (and so the state dict of saved models) is the plain one.
    assert [type(m).__name__ for m in model.decoder.layers][:8] == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "Upsample", "Conv2d"]


def test_glorot_uniform_init(yeast):
    convs = [m for m in yeast.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 14
    for conv in convs:
        receptive = conv.kernel_size[0] * conv.kernel_size[1]
        bound = math.sqrt(6 / (receptive * (conv.in_channels + conv.out_channels)))
        w = conv.weight.detach()
        assert w.abs().max() <= bound + 1e-7
        assert torch.count_nonzero(conv.bias) == 0
        if w.numel() > 100_000:
            # PyTorch's default (bound 1/sqrt(fan_in)) would miss both of these.
            assert w.abs().max() > 0.99 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_optimiser_settings_in_config(yeast):
    c = yeast.config
    assert (c.lr, c.betas, c.epochs, c.batch_size, c.crop_size) == (1e-4, (0.5, 0.999), 30, 64, 64)


def test_config_json_round_trip_rebuilds_same_model():
    model = build("pci", "tiny", protein_channels=1, marker_channels=2)
    fields = json.loads(json.dumps(dataclasses.asdict(model.config)))
    again = build("pci", "tiny", **fields)
    assert again.config == model.config
    assert n_trainable(again) == n_trainable(model)


@pytest.mark.parametrize(
    "bad",
    [{"not_a_field": 1}, {"feature_layer": "conv9"}, {"crop_size": 30},
     {"decoder_stages": ((32,), (16,))}],
)
def test_bad_overrides_are_rejected(bad):
    with pytest.raises(ValueError):
        build("pci", "tiny", protein_channels=1, marker_channels=1, **bad)


def test_wrong_channel_count_is_rejected(yeast):
    with pytest.raises(ValueError, match=r"expected \(B, 2, H, W\)"):
        yeast.features(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible by 4"):
        yeast.features(torch.rand(1, 2, 62, 62))
    with pytest.raises(ValueError, match="marker"):
        PCIConfig(marker_channels=0)


def test_compute_loss_is_mse_on_target_protein():
    torch.manual_seed(0)
    model = build("pci", "tiny", protein_channels=1, marker_channels=2)
    batch = {"source": torch.rand(4, 3, 32, 32), "target": torch.rand(4, 3, 32, 32)}
    out = model.compute_loss(batch)
    assert set(out) == {"loss", "mse"}
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and not out["mse"].requires_grad
    pred = model(batch["source"], batch["target"][:, 1:])
    torch.testing.assert_close(out["loss"], F.mse_loss(pred, batch["target"][:, :1]))


@pytest.fixture
def one_thread():
    """Run a training loop on one intra-op thread, restoring the setting afterwards.

    The tiny networks are too small to gain from threads; on a shared machine the two
    threads contend and a step is several times slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_model_overfits_one_batch(one_thread):
    torch.manual_seed(0)
    model = build("pci", "tiny", protein_channels=1, marker_channels=1)
    # Smooth blobs: the target protein is a blurred copy of its marker, so the task is learnable.
    marker = F.avg_pool2d(torch.rand(8, 1, 32, 32), 5, stride=1, padding=2)
    protein = F.avg_pool2d(marker, 3, stride=1, padding=1) * 2
    cells = torch.cat([protein, marker], dim=1)  # (8, 2, 32, 32)
    batch = {"source": cells, "target": cells.roll(1, dims=0)}
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr, betas=model.config.betas)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = model.compute_loss(batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 50
    # Far below predicting the mean: the network learned the per-pixel pattern.
    assert losses[-1] < protein.var().item() / 10


# ---------------------------------------------------------------------------- pair sampler


@pytest.fixture(scope="module")
def groups() -> np.ndarray:
    rng = np.random.default_rng(1)
    sizes = [1, 2, 3, 5, 8, 1, 13, 1]  # three singleton images
    g = np.repeat([f"plate1/A{i}/f0" for i in range(len(sizes))], sizes)
    return g[rng.permutation(g.size)]


def test_every_cell_is_a_source_once_per_epoch(groups):
    sampler = PairSampler(groups, seed=3)
    assert sampler.n_excluded_cells == 3 and sampler.n_excluded_groups == 3
    assert len(sampler) == groups.size - 3
    assert sampler.summary() == {"cells": 34, "pairs_per_epoch": 31, "excluded_cells": 3,
                                 "excluded_groups": 3}
    singletons = {i for i, g in enumerate(groups) if np.sum(groups == g) == 1}
    for epoch in range(5):
        pairs = sampler.epoch_pairs(epoch)
        assert sorted(pairs.source.tolist()) == sorted(set(range(groups.size)) - singletons)
        assert (pairs.target != pairs.source).all()
        assert (groups[pairs.target] == groups[pairs.source]).all()
        assert pairs.flips.shape == (31, 2, 2) and pairs.flips.dtype == bool


def test_source_order_is_shuffled_and_deterministic(groups):
    a, b = PairSampler(groups, seed=3), PairSampler(groups, seed=3)
    e0, e0_again = a.epoch_pairs(0), b.epoch_pairs(0)
    for x, y in zip(e0, e0_again, strict=True):
        np.testing.assert_array_equal(x, y)
    e1 = a.epoch_pairs(1)
    other_seed = PairSampler(groups, seed=4).epoch_pairs(0)
    assert not np.array_equal(e0.source, e1.source)
    assert not np.array_equal(e0.source, other_seed.source)
    assert not np.array_equal(e0.source, np.sort(e0.source))


def test_resume_mid_epoch_gives_the_remaining_pairs(groups):
    full = PairSampler(groups, seed=7).epoch_pairs(2)
    resumed = PairSampler(groups, seed=7).epoch_pairs(2).skip(12)
    np.testing.assert_array_equal(resumed.source, full.source[12:])
    np.testing.assert_array_equal(resumed.target, full.target[12:])
    np.testing.assert_array_equal(resumed.flips, full.flips[12:])
    with pytest.raises(ValueError, match="position"):
        full.skip(len(full.source) + 1)


def test_targets_are_uniform_over_the_other_cells():
    groups = np.array([0] * 5 + [1] * 2)
    sampler = PairSampler(groups, seed=0)
    counts = np.zeros((7, 7))
    n_epochs = 2000
    for epoch in range(n_epochs):
        pairs = sampler.epoch_pairs(epoch)
        np.add.at(counts, (pairs.source, pairs.target), 1)
    # Each of the 5 cells of group 0 picks each of its 4 partners with probability 1/4.
    block = counts[:5, :5]
    assert np.all(np.diag(block) == 0)
    off = block[~np.eye(5, dtype=bool)]
    expected = n_epochs / 4
    chi2 = np.sum((off - expected) ** 2 / expected)  # 20 cells, 15 degrees of freedom
    assert chi2 < 40  # p ≈ 5e-4 under uniformity
    assert counts[5, 6] == counts[6, 5] == n_epochs  # a pair of cells always pick each other


def test_flips_are_fair_and_independent_between_source_and_target():
    sampler = PairSampler(np.repeat(np.arange(500), 4), seed=11)
    flips = np.concatenate([sampler.epoch_pairs(e).flips for e in range(5)])  # (10000, 2, 2)
    f = flips.reshape(len(flips), 4).astype(float)
    assert np.allclose(f.mean(axis=0), 0.5, atol=0.02)
    corr = np.corrcoef(f.T)
    assert np.abs(corr[~np.eye(4, dtype=bool)]).max() < 0.05
    # All four (source h, target h) combinations occur about equally often.
    joint = np.mean(flips[:, 0, 0] & flips[:, 1, 0])
    assert joint == pytest.approx(0.25, abs=0.02)


def test_all_singletons_is_an_error():
    with pytest.raises(ValueError, match="no image has two cells"):
        PairSampler(["a", "b", "c"], seed=0)


def test_apply_flips_flips_all_channels_alike():
    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 3, 4)
    flips = np.array([[True, False], [True, True]])
    out = apply_flips(x, flips)
    torch.testing.assert_close(out[0], x[0].flip(-1))  # horizontal: W reversed, every channel
    torch.testing.assert_close(out[1], x[1].flip(-1).flip(-2))
    np.testing.assert_array_equal(apply_flips(x.numpy(), flips), out.numpy())
    np.testing.assert_array_equal(apply_flips(x.numpy(), np.zeros((2, 2), bool)), x.numpy())
