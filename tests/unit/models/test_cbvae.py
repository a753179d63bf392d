"""Conditional β-VAE (Donovan-Maiye et al. 2022): architecture, Eq. 3, and the analyses."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from cellrep_ml.models import build
from cellrep_ml.models import cbvae_analysis as ana
from cellrep_ml.models.cbvae import (
    CBVAEConfig,
    ConditionalBetaVAE,
    _ResidualBlock,
    cbvae,
    elbo_beta,
    kl_divergence,
    kl_per_dimension,
    summed_squared_error,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CPU is shared; two intra-op threads fighting over it make small convolutions ~20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _batch(model: ConditionalBetaVAE, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    batch = {"reference": torch.rand(b, cfg.reference_channels, *cfg.input_shape, generator=g)}
    if cfg.kind == "structure":
        batch["structure"] = torch.rand(b, cfg.structure_channels, *cfg.input_shape, generator=g)
        batch["structure_id"] = torch.randint(0, cfg.n_structures, (b,), generator=g)
    return batch


# --------------------------------------------------------------------------- architecture


def _closed_form_reference_params(dims: int, widths, c_in: int, latent: int, bottleneck: int) -> int:
    """Parameters of the reference model counted from the layer list, not from torch."""

    def block(ci: int, co: int) -> int:
        return (4**dims * ci * ci + 2 * ci  # 4x4 (transposed) conv, no bias; BN(ci)
                + 3**dims * ci * co + 2 * co  # 3x3 conv, no bias; BN(co)
                + ci * co + co)  # bypass 1x1 conv with bias

    chans = [c_in, *widths]
    enc = sum(block(chans[i], chans[i + 1]) for i in range(len(widths)))
    back = chans[::-1]
    dec = sum(block(back[i], back[i + 1]) for i in range(len(widths)))
    flat = widths[-1] * bottleneck
    heads = 2 * (flat * latent + latent)
    fc_dec = latent * flat + flat + 2 * widths[-1]  # FC with bias; BN after it
    return enc + dec + heads + fc_dec


@pytest.mark.parametrize(
    ("dims", "expected", "bottleneck"),
    [
        # 2D: 96 x 128 -> 3 x 4 after five halvings.
        (2, 19_915_274, 3 * 4),
        # 3D: 64 x 96 x 128 -> 2 x 3 x 4; the 4x4x4 convolutions of the 512-wide blocks dominate.
        (3, 56_566_730, 2 * 3 * 4),
    ],
)
def test_paper_reference_parameter_count_is_pinned(dims, expected, bottleneck):
    """Pinned counts of the paper's reference model (2 input channels, widths 32-512, latent 512).

    The count is also re-derived from the layer list (``_closed_form_reference_params``);
    spectral norm keeps the weight as one parameter (its u, v vectors are buffers).
    """
    model = cbvae("paper", protein_channels=1, marker_channels=2, dims=dims)
    assert _n_params(model) == expected
    assert expected == _closed_form_reference_params(dims, (32, 64, 128, 256, 512), 2, 512, bottleneck)


def test_one_down_block_by_hand():
    """2D down block 32 -> 64, counted by hand.

    main 4x4 conv 32->32 (no bias, BN follows): 16*32*32 = 16,384; BN(32): 64;
    3x3 conv 32->64 (no bias): 9*32*64 = 18,432; BN(64): 128;
    bypass 1x1 conv 32->64 with bias: 2,048 + 64 = 2,112. Total 37,120.
    In the structure model the block adds ReLU(BN(1x1 conv(x_r))) for 2 reference channels
    (2*64 + 128 = 256) and the label path for 24 structures (24*64 + 128 = 1,664): 39,040.
    """
    plain = _ResidualBlock(2, 32, 64, up=False)
    assert _n_params(plain) == 37_120
    conditioned = _ResidualBlock(2, 32, 64, up=False, reference_channels=2, n_structures=24)
    assert _n_params(conditioned) == 39_040
    x = torch.rand(3, 32, 16, 20)
    assert plain(x).shape == (3, 64, 8, 10)
    up = _ResidualBlock(2, 64, 32, up=True)
    assert up(torch.rand(3, 64, 8, 10)).shape == (3, 32, 16, 20)


@pytest.mark.parametrize(
    ("config", "dims", "kind"),
    [("tiny", 2, "reference"), ("tiny", 3, "reference"), ("tiny", 2, "structure"),
     ("tiny", 3, "structure"), ("paper", 2, "reference")],
)
def test_output_shape_equals_input_shape(config, dims, kind):
    model = cbvae(config, protein_channels=1, marker_channels=2, dims=dims, kind=kind)
    batch = _batch(model, b=2)
    x = batch["structure"] if kind == "structure" else batch["reference"]
    x_hat, mu, logvar = model(x, batch.get("reference") if kind == "structure" else None,
                              batch.get("structure_id"))
    assert x_hat.shape == x.shape
    assert mu.shape == logvar.shape == (2, model.config.latent_dim)
    assert model.features(batch).shape == (2, model.config.latent_dim)


def test_paper_3d_output_shape_equals_input_shape():
    """The full 3D model on one 64 x 96 x 128 cell (eval, no grad: ~3 s on one CPU thread)."""
    model = cbvae("paper", protein_channels=1, marker_channels=2, dims=3).eval()
    x = torch.rand(1, 2, 64, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_hat, mu, _ = model(x)
    assert x_hat.shape == x.shape and mu.shape == (1, 512)


@pytest.mark.parametrize("dims", [2, 3])
def test_every_conv_and_linear_is_spectrally_normalised(dims):
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=dims, kind="structure")
    layer_types = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    layers = [m for m in model.modules() if isinstance(m, layer_types)]
    # 4 blocks x 2 paths x (2 main + 1 bypass + 2 condition) convs + 3 linear layers.
    assert len(layers) == 4 * 2 * 5 + 3
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight"), layer
        kinds = [type(p).__name__ for p in layer.parametrizations.weight]
        assert kinds == ["_SpectralNorm"], (layer, kinds)


def test_output_is_softplus_and_non_negative():
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2).eval()
    assert isinstance(model.decoder[-1].activation, nn.Softplus)
    z = 10.0 * torch.randn(32, model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.decode(z)
    assert out.min() >= 0.0
    # Softplus, not a clamp: negative pre-activations give small positive, not zero, outputs.
    assert (out > 0).float().mean() > 0.99


def test_structure_model_uses_reference_and_label():
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2, kind="structure").eval()
    batch = _batch(model, b=2)
    z = torch.randn(2, model.config.latent_dim, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([0, 1])
    with torch.no_grad():
        base = model.decode(z, batch["reference"], ids)
        other_label = model.decode(z, batch["reference"], torch.tensor([2, 3]))
        other_ref = model.decode(z, batch["reference"].flip(-1), ids)
    assert (base - other_label).abs().max() > 1e-4
    assert (base - other_ref).abs().max() > 1e-4
    with pytest.raises(ValueError, match="structure_id"):
        model.encode(batch["structure"], batch["reference"], None)
    with pytest.raises(ValueError, match=r"\[0, 24\)"):
        model.encode(batch["structure"], batch["reference"], torch.tensor([0, 24]))
    with pytest.raises(ValueError, match="bare tensor"):
        model.features(batch["reference"])


# --------------------------------------------------------------------------- Eq. 3


def test_kl_matches_closed_form_on_hand_set_values():
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [-1.0, 0.0]])
    # 1/2 (mu^2 + sigma^2 - 1 - log sigma^2), element by element:
    expected = torch.tensor([[0.5, 0.5 * (1.0 - math.log(2.0))],
                             [0.5 * math.exp(-1.0), 2.0]])
    torch.testing.assert_close(kl_per_dimension(mu, logvar), expected)
    torch.testing.assert_close(kl_divergence(mu, logvar), expected.sum(1))
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(2, 2), torch.ones(2, 2))
    torch.testing.assert_close(kl_divergence(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_summed_squared_error_sums_every_pixel():
    x = torch.zeros(2, 2, 3, 4)
    x_hat = torch.full_like(x, 0.5)
    x_hat[1] = 1.0
    torch.testing.assert_close(summed_squared_error(x, x_hat), torch.tensor([24 * 0.25, 24.0]))


def test_eq3_at_half_beta_is_half_the_standard_elbo():
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2, beta=0.5).eval()
    batch = _batch(model, b=3)
    x = batch["reference"]
    torch.manual_seed(123)
    out = model.compute_loss(batch)
    # Replay the same draw of z and compute the standard ELBO (Eq. 1) independently.
    torch.manual_seed(123)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    x_hat = model.decode(z)
    log_lik = -((x - x_hat) ** 2).sum(dim=(1, 2, 3))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1)
    standard = (log_lik - kl).mean()
    torch.testing.assert_close(out["elbo"], 0.5 * standard.detach())
    torch.testing.assert_close(out["loss"], -0.5 * standard, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["recon"], -log_lik.mean().detach())
    torch.testing.assert_close(out["kl"], kl.mean().detach())
    assert out["loss"].requires_grad


def test_elbo_beta_weights():
    recon, kl = torch.tensor([10.0, 4.0]), torch.tensor([2.0, 6.0])
    torch.testing.assert_close(elbo_beta(recon, kl, 0.0), torch.tensor([-10.0, -4.0]))
    torch.testing.assert_close(elbo_beta(recon, kl, 1.0), torch.tensor([-2.0, -6.0]))
    torch.testing.assert_close(elbo_beta(recon, kl, 0.25), torch.tensor([-8.0, -4.5]))


def test_validation_elbo_per_image_and_reproducible():
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2, kind="structure").eval()
    batch = _batch(model, b=3)
    a = model.elbo(batch, 10, generator=torch.Generator().manual_seed(0))
    b = model.elbo(batch, 10, generator=torch.Generator().manual_seed(0))
    plain = model.elbo(batch, 10, weighted=False, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3,) and torch.equal(a, b)
    torch.testing.assert_close(a, 0.5 * plain)  # beta = 0.5
    assert (a < 0).all()


def test_tiny_model_overfits_a_small_batch():
    torch.manual_seed(0)
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2)
    # Eight cells: a membrane ring and a DNA disc of varying size, as the real crops look.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    cells = []
    for k in range(8):
        radius = 7.0 + k
        membrane = torch.exp(-((r - radius) ** 2) / 2.0)
        dna = (r < 0.5 * radius).float()
        cells.append(torch.stack([membrane, dna]))
    batch = {"reference": torch.stack(cells)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=model.config.adam_betas)
    losses = []
    for _ in range(100):
        out = model.compute_loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[-5:]) < 0.25 * np.mean(losses[:5]), losses[::10]


# --------------------------------------------------------------------------- config & registry


def test_config_is_frozen_json_and_registered():
    model = build("cbvae", "tiny", protein_channels=1, marker_channels=2, dims=3, kind="structure",
                  n_structures=5)
    cfg = model.config
    assert cfg.input_shape == (16, 32, 32) and cfg.n_structures == 5 and cfg.name == "tiny"
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["widths"] == list(cfg.widths)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 0.1  # type: ignore[misc]
    paper = cbvae("paper", dims=2)
    assert paper.config.input_shape == (96, 128) and paper.config.latent_dim == 512
    assert (paper.config.lr, paper.config.adam_betas, paper.config.batch_size,
            paper.config.epochs, paper.config.val_samples) == (2e-4, (0.9, 0.999), 32, 300, 10)
    assert paper.config.beta == 0.5


def test_bad_configs_and_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match="divisible"):
        cbvae("tiny", dims=2, input_shape=(30, 32))
    with pytest.raises(ValueError, match="beta"):
        cbvae("tiny", beta=1.5)
    with pytest.raises(TypeError, match="unknown override"):
        cbvae("tiny", latent=3)
    with pytest.raises(TypeError, match="marker_channels"):
        cbvae("tiny", reference_channels=3)
    model = cbvae("tiny", dims=2)
    with pytest.raises(ValueError, match=r"\(B, 2, 32, 32\)"):
        model.compute_loss({"reference": torch.rand(2, 2, 16, 16)})
    with pytest.raises(ValueError, match="reference"):
        model.compute_loss({"structure": torch.rand(2, 1, 32, 32)})
    assert isinstance(CBVAEConfig(), CBVAEConfig)


# --------------------------------------------------------------------------- analyses


def test_mad_ranking_puts_planted_dimension_first():
    rng = np.random.default_rng(0)
    mu = rng.normal(0.0, 0.1, size=(500, 16))
    mu[:, 11] = rng.normal(0.0, 3.0, size=500)
    mu[:, 4] = rng.normal(0.0, 1.0, size=500)
    order, mad = ana.rank_dimensions(mu)
    assert order[0] == 11 and order[1] == 4
    assert np.all(np.diff(mad[order]) <= 0)
    np.testing.assert_allclose(mad, np.abs(mu).mean(0))


def test_mean_kl_per_dimension_zero_at_prior():
    mu = np.zeros((10, 3))
    logvar = np.zeros((10, 3))
    mu[:, 1] = 2.0
    logvar[:, 2] = -2.0
    kl = ana.mean_kl_per_dimension(mu, logvar)
    np.testing.assert_allclose(kl, [0.0, 2.0, 0.5 * (math.exp(-2.0) - 1 + 2.0)])


def test_encode_dataset_restores_training_mode():
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2)
    batches = [_batch(model, b=3, seed=s) for s in range(2)]
    mu, logvar = ana.encode_dataset(model, batches)
    assert mu.shape == logvar.shape == (6, 16)
    assert model.training
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(mu[:3], model.features(batches[0]).double().numpy(), rtol=1e-5, atol=1e-6)


def test_generation_and_imputation_shapes():
    ref = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2)
    cells = ana.generate_cells(ref, 5, seed=0)
    assert cells.shape == (5, 2, 32, 32) and cells.min() >= 0
    torch.testing.assert_close(cells, ana.generate_cells(ref, 5, seed=0))

    struct = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2, kind="structure",
                   n_structures=4)
    drawn = ana.generate_structures(struct, cells, torch.tensor([0, 1, 2, 3, 0]), n_samples=3)
    assert drawn.shape == (3, 5, 1, 32, 32)
    assert (drawn[0] - drawn[1]).abs().max() > 0  # independent draws differ
    mean = ana.impute_structures(struct, cells[:2])
    assert mean.shape == (2, 4, 1, 32, 32)
    # The prior-mean imputation of structure 2 is the decoder at z = 0 with label 2.
    struct.eval()
    with torch.no_grad():
        direct = struct.decode(torch.zeros(2, 16), cells[:2], torch.tensor([2, 2]))
    torch.testing.assert_close(mean[:, 2], direct)
    samples = ana.impute_structures(struct, cells[:2], [3, 1], n_samples=2)
    assert samples.shape == (2, 2, 2, 1, 32, 32)
    with pytest.raises(ValueError, match="reference model"):
        ana.generate_cells(struct, 2)


def test_coupling_arithmetic_eqs_4_and_5():
    real = np.array([-50.0, -100.0, -80.0])
    swapped = np.array([[-100.0, -100.0], [-100.0, -100.0], [-60.0, -100.0]])
    kappa = ana.coupling_strength(real, swapped)
    # c = real / mean(swapped): 0.5, 1.0, 1.0 -> kappa = 0.5, 0, 0
    np.testing.assert_allclose(kappa, [0.5, 0.0, 0.0])
    d = ana.differential_coupling(np.array([0.5, 0.0, 0.2, 0.0]), np.array([0.0, 0.4, 0.2, 0.0]))
    np.testing.assert_allclose(d[:3], [1.0, -1.0, 0.0])
    assert np.isnan(d[3])
    assert np.isnan(ana.coupling_strength(np.array([0.0]), np.array([0.0])))[0]


class _CopyOfChannel(nn.Module):
    """Stand-in structure model whose ELBO says "x_t is a copy of reference channel c".

    ELBO = −Σ(x_t − x_r[c])² − 0.1 Σ(x_t − x_r[other])² − 1: strongly coupled to c, weakly
    to the other channel; cheap, exact and deterministic.
    """

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.config = SimpleNamespace(kind="structure")
        self.anchor = nn.Parameter(torch.zeros(()))  # a device for the analysis helpers

    def elbo(self, batch, n_samples=10, *, weighted=True, generator=None):
        x_t = batch["structure"][:, 0]
        ref = batch["reference"]
        own = ((x_t - ref[:, self.channel]) ** 2).flatten(1).sum(1)
        other = ((x_t - ref[:, 1 - self.channel]) ** 2).flatten(1).sum(1)
        return -own - 0.1 * other - 1.0


@pytest.mark.parametrize(("copied", "sign"), [(0, 1.0), (1, -1.0)])
def test_coupling_sign_on_channel_copy_controls(copied, sign):
    """The paper's controls: a membrane copy is membrane-coupled (d > 0), a DNA copy nucleus-coupled."""
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(6, 2, 8, 8, generator=g)
    batch = {"reference": reference, "structure": reference[:, copied:copied + 1].clone(),
             "structure_id": torch.zeros(6, dtype=torch.long)}
    scores = ana.coupling_scores(_CopyOfChannel(copied), batch, batch_size=4)
    assert scores.differential.shape == (6,)
    assert np.all(sign * scores.differential > 0.5)
    coupled = scores.kappa_membrane if copied == 0 else scores.kappa_nucleus
    assert np.all(coupled > 0.5)


def test_swapped_reference_elbos_on_real_model():
    model = cbvae("tiny", protein_channels=1, marker_channels=2, dims=2, kind="structure",
                  n_structures=3)
    batch = _batch(model, b=5)
    real, swapped = ana.swapped_reference_elbos(model, batch, 0, n_samples=2, batch_size=2)
    assert real.shape == (5,) and swapped.shape == (5, 4)
    real2, swapped2 = ana.swapped_reference_elbos(model, batch, 0, n_swaps=2, n_samples=2,
                                                  batch_size=2)
    assert swapped2.shape == (5, 2)
    np.testing.assert_allclose(real, real2, rtol=1e-6)  # same seed and chunks, same draws
    # Each swapped column is one of the full set (the subset of shifts is drawn, not invented).
    for column in swapped2.T:
        assert np.any(np.all(np.isclose(swapped, column[:, None], rtol=1e-5), axis=0))
    assert not np.allclose(swapped, real[:, None])  # the swap changes the ELBO
    assert model.training


def test_permutation_test_detects_shift_and_not_sham():
    rng = np.random.default_rng(1)
    untreated = rng.normal(size=(60, 8))
    shifted = rng.normal(size=(40, 8)) + np.r_[1.5, np.zeros(7)]
    sham = rng.normal(size=(40, 8))
    real = ana.latent_shift_test(shifted, untreated, n_permutations=2000, seed=0)
    null = ana.latent_shift_test(sham, untreated, n_permutations=2000, seed=0)
    assert real.p_value < 0.005
    assert null.p_value > 0.1
    assert real.direction.shape == (8,) and real.direction[0] > 1.0
    assert real.effect == pytest.approx(np.linalg.norm(shifted.mean(0) - untreated.mean(0)))


def test_permutation_p_value_matches_exact_enumeration():
    treated = np.array([[0.0], [3.0]])
    untreated = np.array([[1.0], [2.5], [0.5]])
    pooled = np.concatenate([treated, untreated])
    observed = abs(treated.mean() - untreated.mean())
    splits = list(itertools.combinations(range(5), 2))
    extreme = 0
    for idx in splits:
        mask = np.zeros(5, bool)
        mask[list(idx)] = True
        extreme += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12
    exact = extreme / len(splits)
    result = ana.latent_shift_test(treated, untreated, n_permutations=20_000, seed=3)
    assert result.p_value == pytest.approx(exact, abs=0.015)


def test_bonferroni():
    np.testing.assert_allclose(ana.bonferroni([0.01, 0.2, 0.0004]), [0.03, 0.6, 0.0012])
    np.testing.assert_allclose(ana.bonferroni([0.5, 0.9]), [1.0, 1.0])
    with pytest.raises(ValueError):
        ana.bonferroni([0.1, 1.2])
