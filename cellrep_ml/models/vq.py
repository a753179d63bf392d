"""Vector quantisation with a straight-through estimator (van den Oord et al. 2017, VQ-VAE).

Also the *split quantisation* of cytoself (Kobayashi et al. 2021, Methods "Split
quantization", Supp. Fig. 7): each C-dimensional latent vector is cut into ``splits``
contiguous sub-vectors of ``C / splits`` dimensions, all quantised against one shared
codebook, so a coarse 4×4 map still yields 4·4·9 = 144 codes per image.

The nearest code is found with one matrix product, ``argmin_k ‖e_k‖² − 2 z·e_k`` (the
``‖z‖²`` term is the same for every k and is dropped), evaluated in row chunks so that
no (N, K, D) difference tensor and no dense (N, K) one-hot matrix is ever built; code
vectors are gathered with ``F.embedding`` and code usage is counted with ``bincount``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VQOutput", "VectorQuantizer", "nearest_codes", "perplexity"]

# Rows of latent vectors scored against the codebook at a time: bounds the transient
# (rows, K) distance block at 4096 × 2048 × 4 B = 32 MiB whatever the batch size.
_CHUNK_ROWS = 4096


@torch.no_grad()
def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry (Euclidean) of every row of ``vectors``.

    Parameters
    ----------
    vectors : (N, D) Tensor
        Latent vectors.
    codebook : (K, D) Tensor
        Code vectors.

    Returns
    -------
    indices : (N,) LongTensor
        ``argmin_k ‖vectors[n] − codebook[k]‖²``; ties go to the smallest k.

    Notes
    -----
    ``‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²``; the first term does not depend on k, so the
    argmin is that of ``‖e‖² − 2 z·e``, one ``addmm`` per chunk of rows.
    """
    if vectors.ndim != 2 or codebook.ndim != 2 or vectors.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"expected vectors (N, D) and codebook (K, D) with the same D, got "
            f"{tuple(vectors.shape)} and {tuple(codebook.shape)}"
        )
    code_sq = (codebook * codebook).sum(dim=1)  # (K,)
    out = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
    for start in range(0, vectors.shape[0], _CHUNK_ROWS):
        rows = vectors[start:start + _CHUNK_ROWS]  # (n, D)
        scores = torch.addmm(code_sq, rows, codebook.t(), beta=1.0, alpha=-2.0)  # (n, K)
        out[start:start + rows.shape[0]] = scores.argmin(dim=1)
    return out


@torch.no_grad()
def perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Codebook perplexity ``exp(−Σ_k p_k log p_k)`` of the code usage in ``indices``.

    Parameters
    ----------
    indices : (...) LongTensor
        Code indices in ``[0, num_codes)``, any shape (all entries are pooled).
    num_codes : int
        Codebook size K.

    Returns
    -------
    perplexity : () Tensor
        Between 1 (a single code used) and K (all codes used equally often).
    """
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).to(torch.float64)
    p = counts / counts.sum().clamp_min(1.0)
    # 0 · log 0 = 0: unused codes contribute nothing to the entropy.
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return torch.exp(entropy).to(torch.float32)


@dataclass
class VQOutput:
    """What :class:`VectorQuantizer` returns for a (B, C, H, W) latent map.

    Attributes
    ----------
    quantized : (B, C, H, W) Tensor
        Straight-through quantised map: its value is the code vectors, its gradient
        w.r.t. the input is the identity.
    indices : (B, H, W, S) LongTensor
        Code index of each of the S sub-vectors at every position (S = ``splits``).
    loss : () Tensor
        ``codebook_loss + commitment · commitment_loss``.
    codebook_loss : () Tensor
        ``mean ‖sg(z) − e‖²`` (moves the codes towards the encoder outputs).
    commitment_loss : () Tensor
        ``mean ‖z − sg(e)‖²`` (unweighted; keeps the encoder close to its codes).
    perplexity : () Tensor
        Code-usage perplexity of this batch (no gradient).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


class VectorQuantizer(nn.Module):
    """Quantise the channel vectors of a (B, C, H, W) map against a (K, C / splits) codebook.

    VQ-VAE loss (van den Oord et al. 2017, Eq. 3, as used by Kobayashi et al. 2021):
    ``‖sg(z) − e‖² + β ‖z − sg(e)‖²`` with β = ``commitment``, each term a mean over
    elements; the decoder sees ``z + sg(e − z)`` (straight-through estimator).

    Parameters
    ----------
    num_codes : int
        Codebook size K (2048 in cytoself).
    code_dim : int
        Dimension D of one code (64 in cytoself).
    splits : int, default 1
        Number S of contiguous sub-vectors each C = S·D channel vector is cut into; all
        are quantised against the one shared codebook (cytoself's global level: S = 9).
    commitment : float, default 0.25
        β, the weight of the commitment term.
    init_range : float, default 0.05
        Codes are initialised uniform in ``[−init_range, init_range]``.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        splits: int = 1,
        commitment: float = 0.25,
        init_range: float = 0.05,
    ) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1 or splits < 1:
            raise ValueError(
                f"num_codes, code_dim and splits must be >= 1, got {num_codes}, {code_dim}, {splits}"
            )
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.splits = splits
        self.commitment = commitment
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-init_range, init_range))

    @property
    def channels(self) -> int:
        """Channel count C = splits · code_dim of the maps this quantiser accepts."""
        return self.splits * self.code_dim

    def _to_rows(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ValueError(
                f"expected a (B, {self.channels}, H, W) latent map "
                f"({self.splits} × {self.code_dim}), got {tuple(z.shape)}"
            )
        # Channels last, then cut each C-vector into S contiguous D-vectors.
        return z.permute(0, 2, 3, 1).reshape(-1, self.code_dim)  # (B·H·W·S, D)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices of a latent map.

        Parameters
        ----------
        z : (B, C, H, W) Tensor

        Returns
        -------
        indices : (B, H, W, S) LongTensor
        """
        b, _, h, w = z.shape
        idx = nearest_codes(self._to_rows(z).detach(), self.codebook.detach())
        return idx.view(b, h, w, self.splits)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors of ``indices`` laid out as a latent map (the inverse of :meth:`encode`).

        Parameters
        ----------
        indices : (B, H, W, S) LongTensor

        Returns
        -------
        quantized : (B, C, H, W) Tensor
        """
        if indices.ndim != 4 or indices.shape[-1] != self.splits:
            raise ValueError(
                f"expected (B, H, W, {self.splits}) code indices, got {tuple(indices.shape)}"
            )
        b, h, w, _ = indices.shape
        codes = F.embedding(indices, self.codebook)  # (B, H, W, S, D)
        return codes.reshape(b, h, w, self.channels).permute(0, 3, 1, 2)  # (B, C, H, W)

    def forward(self, z: torch.Tensor) -> VQOutput:
        """Quantise ``z`` (B, C, H, W); see :class:`VQOutput` for what comes back."""
        indices = self.encode(z)  # (B, H, W, S)
        e = self.embed(indices)  # (B, C, H, W), differentiable w.r.t. the codebook
        codebook_loss = F.mse_loss(e, z.detach())
        commitment_loss = F.mse_loss(z, e.detach())
        quantized = z + (e - z).detach()  # straight-through: value e, gradient identity
        return VQOutput(
            quantized=quantized,
            indices=indices,
            loss=codebook_loss + self.commitment * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity(indices, self.num_codes),
        )

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, code_dim={self.code_dim}, splits={self.splits}, "
                f"commitment={self.commitment}")
