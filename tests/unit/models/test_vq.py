"""Vector quantiser of cytoself: nearest codes, VQ loss, straight-through, split, perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from cellrep_ml.models.vq import VectorQuantizer, nearest_codes, perplexity


def _map(vectors: list[list[float]]) -> torch.Tensor:
    """(N, C) vectors → a (1, C, 1, N) latent map (one image, one row of N positions)."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, -1, 1, len(vectors))


def _hand_made_vq() -> VectorQuantizer:
    vq = VectorQuantizer(2, 2, commitment=0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    return vq


def test_nearest_codes_matches_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(5000, 8, generator=g)  # > one 4096-row chunk
    codebook = torch.randn(37, 8, generator=g)
    expected = torch.cdist(vectors.double(), codebook.double()).argmin(dim=1)
    assert torch.equal(nearest_codes(vectors, codebook), expected)


def test_vq_loss_on_hand_made_codebook():
    # z0 = (0.2, 0.9): distances² 0.85 to (0,0), 0.65 to (1,1) → code 1, error (−0.8, −0.1).
    # z1 = (0.1, −0.2): distances² 0.05 to (0,0), 2.25 to (1,1) → code 0, error (0.1, −0.2).
    # mean squared error over the 4 elements = (0.64 + 0.01 + 0.01 + 0.04) / 4 = 0.175;
    # loss = 0.175 + 0.25 · 0.175 = 0.21875.
    vq = _hand_made_vq()
    out = vq(_map([[0.2, 0.9], [0.1, -0.2]]))
    assert out.indices.shape == (1, 1, 2, 1)
    assert out.indices.flatten().tolist() == [1, 0]
    assert out.codebook_loss.item() == pytest.approx(0.175, abs=1e-7)
    assert out.commitment_loss.item() == pytest.approx(0.175, abs=1e-7)
    assert out.loss.item() == pytest.approx(0.21875, abs=1e-7)
    torch.testing.assert_close(out.quantized, _map([[1.0, 1.0], [0.0, 0.0]]))
    # Two codes used once each: perplexity exp(log 2) = 2.
    assert out.perplexity.item() == pytest.approx(2.0, abs=1e-6)


def test_vq_loss_gradients_split_between_codebook_and_encoder():
    # d/dz [β mean (z − sg(e))²] = 2β (z − e) / numel; d/de [mean (sg(z) − e)²] = 2 (e − z) / numel.
    vq = _hand_made_vq()
    z = _map([[0.2, 0.9], [0.1, -0.2]]).requires_grad_()
    out = vq(z)
    out.loss.backward()
    e = _map([[1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(z.grad, 2 * 0.25 * (z.detach() - e) / 4)
    expected_codebook_grad = torch.tensor([[2 * (0 - 0.1) / 4, 2 * (0 + 0.2) / 4],
                                           [2 * (1 - 0.2) / 4, 2 * (1 - 0.9) / 4]])
    torch.testing.assert_close(vq.codebook.grad, expected_codebook_grad)


def test_straight_through_gradient_equals_upstream_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 4, splits=2)
    z = torch.randn(2, 8, 3, 5, requires_grad=True)
    out = vq(z)
    upstream = torch.randn_like(out.quantized)
    (grad_z,) = torch.autograd.grad(out.quantized, z, grad_outputs=upstream)
    torch.testing.assert_close(grad_z, upstream, rtol=0, atol=0)
    # And the forward value is the code vectors, not z.
    torch.testing.assert_close(out.quantized.detach(), vq.embed(out.indices).detach())


def test_split_quantisation_round_trip():
    torch.manual_seed(1)
    splits, dim = 9, 4
    vq = VectorQuantizer(50, dim, splits=splits)
    indices = torch.randint(0, 50, (3, 4, 4, splits))
    z = vq.embed(indices)  # (3, 36, 4, 4) built from codebook entries
    assert z.shape == (3, splits * dim, 4, 4)
    # Split s occupies channels [s·dim, (s+1)·dim): contiguous sub-vectors.
    torch.testing.assert_close(z[1, 2 * dim:3 * dim, 3, 0], vq.codebook[indices[1, 3, 0, 2]].detach())
    out = vq(z)
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(out.quantized, z, rtol=0, atol=0)
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("k", [1, 2, 7, 2048])
def test_perplexity_equals_k_for_uniform_usage(k):
    indices = torch.arange(k).repeat(3)
    assert perplexity(indices, 2048).item() == pytest.approx(k, rel=1e-5)


def test_perplexity_of_a_single_code_is_one_and_skewed_usage_in_between():
    assert perplexity(torch.full((625,), 17), 2048).item() == pytest.approx(1.0)
    p = torch.tensor([0.75, 0.25])
    expected = math.exp(-(p * p.log()).sum().item())  # ≈ 1.7548
    assert perplexity(torch.tensor([0, 0, 0, 1]), 4).item() == pytest.approx(expected, rel=1e-6)


def test_codebook_initialised_uniform_in_range():
    torch.manual_seed(0)
    vq = VectorQuantizer(2048, 64, init_range=0.05)
    assert vq.codebook.shape == (2048, 64)
    assert vq.codebook.abs().max().item() <= 0.05
    assert vq.codebook.std().item() == pytest.approx(0.1 / math.sqrt(12), rel=0.02)


def test_wrong_channel_count_is_rejected_with_the_expected_shape():
    vq = VectorQuantizer(16, 4, splits=9)
    with pytest.raises(ValueError, match=r"\(B, 36, H, W\)"):
        vq(torch.zeros(1, 32, 2, 2))
