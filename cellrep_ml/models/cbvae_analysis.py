"""Analyses of a trained conditional β-VAE (Donovan-Maiye et al. 2022, Sections 4.2-4.5, 6.5).

* :func:`encode_dataset`, :func:`mean_kl_per_dimension`, :func:`rank_dimensions` — the
  latent space: per-dimension KL (Fig. S6) and dimensions ranked by mean absolute deviation
  of μ (Fig. S3b, Fig. 2).
* :func:`generate_cells`, :func:`generate_structures`, :func:`impute_structures` — sampling
  from p(x_r) and p(x_t | x_r, t) (Section 4.3.1, Fig. 4).
* :func:`coupling_strength`, :func:`differential_coupling`, :func:`swapped_reference_elbos`,
  :func:`coupling_scores` — coupling of a structure to membrane vs nucleus (Eqs. 4-5, Fig. 5).
* :func:`latent_shift_test`, :func:`bonferroni` — drug-induced shifts of the latent
  centroid, with a permutation test (Section 4.5, Fig. 6).
* :func:`rate_distortion` — the two terms of the ELBO on held-out cells (Section 4.3, Fig. 3a).
* :func:`treatment_split`, :func:`perturb_structures` — a simulated drug: a controlled change
  of the structure images of a random half of the cells (our stand-in for Section 4.5's
  Paclitaxel / Brefeldin screen, which a simulated screen does not have).

Model-facing functions take a :class:`~cellrep_ml.models.cbvae.ConditionalBetaVAE`, run it
in evaluation mode (BatchNorm running statistics; the caller's mode is restored) without
gradients, and take a seed for every random draw. Statistics are numpy in, numpy out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cellrep_ml.models.cbvae import (
    ConditionalBetaVAE,
    kl_divergence,
    kl_per_dimension,
    summed_squared_error,
)

__all__ = [
    "CouplingScores",
    "LatentShiftResult",
    "PERTURBATIONS",
    "RateDistortion",
    "bonferroni",
    "coupling_scores",
    "coupling_strength",
    "differential_coupling",
    "encode_dataset",
    "generate_cells",
    "generate_structures",
    "impute_structures",
    "latent_shift_test",
    "mean_kl_per_dimension",
    "perturb_structures",
    "rank_dimensions",
    "rate_distortion",
    "swapped_reference_elbos",
    "treatment_split",
]

Batch = Mapping[str, torch.Tensor]


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: Batch | torch.Tensor, device: torch.device) -> Batch | torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return {key: value.to(device) for key, value in batch.items()}


def _require_kind(model: ConditionalBetaVAE, kind: str, what: str) -> None:
    if model.config.kind != kind:
        raise ValueError(f"{what} needs the {kind} model, got a {model.config.kind} model")


# --------------------------------------------------------------------------- latent space


def encode_dataset(
    model: ConditionalBetaVAE, batches: Iterable[Batch | torch.Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances of every cell of a dataset.

    Parameters
    ----------
    model : ConditionalBetaVAE
    batches : iterable of batch dicts (or reference images, for the reference model)
        As accepted by :meth:`ConditionalBetaVAE.compute_loss`; e.g. a DataLoader over the
        test split.

    Returns
    -------
    mu, logvar : (N, D) float64 ndarray
    """
    mus, logvars = [], []
    device = _device(model)
    with _evaluating(model):
        for batch in batches:
            mu, logvar = model.posterior(_to(batch, device))
            mus.append(mu.double().cpu().numpy())
            logvars.append(logvar.double().cpu().numpy())
    if not mus:
        raise ValueError("encode_dataset: the dataset yielded no batch")
    return np.concatenate(mus), np.concatenate(logvars)


def mean_kl_per_dimension(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z_d | x) ‖ N(0, 1)) of each latent dimension, averaged over cells (Fig. S6).

    Dimensions the model does not use collapse onto the prior and carry ≈ 0 nats; the
    number of dimensions with non-negligible KL is the model's effective dimensionality,
    which falls as β of Eq. 3 grows.

    Parameters
    ----------
    mu, logvar : (N, D) ndarray
        From :func:`encode_dataset`.

    Returns
    -------
    (D,) ndarray
        Mean KL per dimension in nats; non-negative.
    """
    mu_t = torch.as_tensor(np.asarray(mu, dtype=np.float64))
    logvar_t = torch.as_tensor(np.asarray(logvar, dtype=np.float64))
    if mu_t.ndim != 2 or mu_t.shape != logvar_t.shape:
        raise ValueError(f"mu and logvar must both be (N, D), got {tuple(mu_t.shape)} and {tuple(logvar_t.shape)}")
    return kl_per_dimension(mu_t, logvar_t).mean(dim=0).numpy()


def rank_dimensions(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latent dimensions ranked by mean absolute deviation of μ from 0 (Fig. S3b, Fig. 2).

    The prior is centred at 0 and unused dimensions stay there, so the mean |μ_d| over
    cells measures how much of the data's variation dimension d carries; the paper keeps
    the top 32 of 512.

    Parameters
    ----------
    mu : (N, D) ndarray
        Posterior means of N cells.

    Returns
    -------
    order : (D,) int ndarray
        Dimension indices, most informative first (ties keep index order).
    mad : (D,) ndarray
        Mean |μ_d| of each dimension, in index order (``mad[order]`` is descending).
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] == 0:
        raise ValueError(f"rank_dimensions: mu must be (N, D) with N >= 1, got {mu.shape}")
    mad = np.abs(mu).mean(axis=0)
    order = np.argsort(-mad, kind="stable")
    return order, mad


# --------------------------------------------------------------------------- generation


def _prior(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n, dim, generator=generator).to(device)


def generate_cells(model: ConditionalBetaVAE, n: int, *, seed: int = 0) -> torch.Tensor:
    """Draw new cell and nuclear shapes from the reference model, z ~ N(0, I) → x̂_r (Fig. 4a).

    Parameters
    ----------
    model : ConditionalBetaVAE
        Reference model (``kind="reference"``).
    n : int
        Number of cells.
    seed : int
        Seed of the latent draws.

    Returns
    -------
    (n, C_r, [Z,] Y, X) tensor
        Decoder means (non-negative), on the model's device.
    """
    _require_kind(model, "reference", "generate_cells")
    with _evaluating(model):
        z = _prior(n, model.config.latent_dim, seed, _device(model))  # (n, D)
        return model.decode(z)


def generate_structures(
    model: ConditionalBetaVAE,
    reference: torch.Tensor,
    structure_id: torch.Tensor,
    *,
    n_samples: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Draw structures of type t in given cells, z_t ~ N(0, I) → x̂_t given (x_r, t) (Fig. 4b).

    Parameters
    ----------
    model : ConditionalBetaVAE
        Structure model (``kind="structure"``).
    reference : (B, C_r, [Z,] Y, X) tensor
        Cell geometries x_r (real or from :func:`generate_cells`).
    structure_id : (B,) int tensor
        Structure to draw in each cell.
    n_samples : int
        Independent draws per cell.
    seed : int
        Seed of the latent draws.

    Returns
    -------
    (n_samples, B, C_t, [Z,] Y, X) tensor
    """
    _require_kind(model, "structure", "generate_structures")
    device = _device(model)
    reference, structure_id = reference.to(device), structure_id.to(device)
    b = reference.shape[0]
    with _evaluating(model):
        z = _prior(n_samples * b, model.config.latent_dim, seed, device)  # (S*B, D)
        out = [model.decode(z[s * b:(s + 1) * b], reference, structure_id) for s in range(n_samples)]
    return torch.stack(out)


def impute_structures(
    model: ConditionalBetaVAE,
    reference: torch.Tensor,
    structure_ids: Sequence[int] | None = None,
    *,
    n_samples: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Impute structures that were never imaged in a cell, from p(x_t | x_r, t) (Section 4.3.1).

    With ``n_samples=None`` each structure is the decoder's output at the conditional prior's
    mean z = 0, the most typical placement of t in geometry x_r; with ``n_samples=k`` it is k
    draws z ~ N(0, I), whose spread shows how variable the placement is.

    Parameters
    ----------
    model : ConditionalBetaVAE
        Structure model.
    reference : (B, C_r, [Z,] Y, X) tensor
        Cell geometries.
    structure_ids : sequence of int, optional
        Structures to impute; all ``n_structures`` by default.
    n_samples : int, optional
        ``None`` for the prior mean, else the number of draws.
    seed : int
        Seed of the latent draws (``n_samples`` given).

    Returns
    -------
    (B, T, C_t, [Z,] Y, X) tensor, or (B, T, n_samples, C_t, [Z,] Y, X) with ``n_samples``
        T = ``len(structure_ids)``, in the order given.
    """
    _require_kind(model, "structure", "impute_structures")
    ids = list(range(model.config.n_structures)) if structure_ids is None else list(structure_ids)
    if not ids:
        raise ValueError("impute_structures: structure_ids is empty; pass None for all structures")
    device = _device(model)
    reference = reference.to(device)
    b, dim = reference.shape[0], model.config.latent_dim
    per_structure = []
    with _evaluating(model):
        for k, t in enumerate(ids):
            label = torch.full((b,), int(t), dtype=torch.long, device=device)
            if n_samples is None:
                per_structure.append(model.decode(torch.zeros(b, dim, device=device), reference, label))
            else:
                # A distinct seed per structure keeps the draws independent across structures.
                z = _prior(n_samples * b, dim, seed + k, device).view(n_samples, b, dim)
                draws = [model.decode(z[s], reference, label) for s in range(n_samples)]
                per_structure.append(torch.stack(draws, dim=1))  # (B, S, C_t, ...)
    return torch.stack(per_structure, dim=1)


# --------------------------------------------------------------------------- coupling


def coupling_strength(elbo_real: np.ndarray, elbo_swapped: np.ndarray) -> np.ndarray:
    """Coupling of a structure to one reference channel, κ = 1 − c with c of Eq. 4.

    c_i = ELBO(x_i) / mean_j ELBO(x_i with reference channel r taken from cell j). ELBOs are
    negative, so a structure whose placement depends on channel r is explained worse after
    the swap, c_i < 1 and κ_i > 0; an uncoupled structure gives c_i ≈ 1, κ_i ≈ 0. We report
    κ = 1 − c so that 0 means "uncoupled" and larger means "more coupled".

    Parameters
    ----------
    elbo_real : (N,) ndarray
        ELBO of each cell as imaged.
    elbo_swapped : (N, J) or (N,) ndarray
        ELBOs with channel r swapped from J other cells of the same structure (or their mean).

    Returns
    -------
    (N,) ndarray
        κ per cell; NaN where the mean swapped ELBO is 0 (a perfectly explained blank image).
    """
    real = np.asarray(elbo_real, dtype=np.float64)
    swapped = np.asarray(elbo_swapped, dtype=np.float64)
    if swapped.ndim == 2:
        swapped = swapped.mean(axis=1)
    if real.ndim != 1 or swapped.shape != real.shape:
        raise ValueError(
            f"coupling_strength: elbo_real must be (N,) and elbo_swapped (N, J) or (N,), "
            f"got {real.shape} and {np.asarray(elbo_swapped).shape}"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        c = real / swapped
    c[swapped == 0] = np.nan  # 0/0 or x/0: no information, not infinite coupling
    return 1.0 - c


def differential_coupling(kappa_membrane: np.ndarray, kappa_nucleus: np.ndarray) -> np.ndarray:
    """Relative coupling to membrane vs nucleus, the summand of Eq. 5.

    d_i = (κ_i^m − κ_i^n) / (κ_i^m + κ_i^n): +1 coupled to the membrane only, −1 to the
    nucleus only, 0 equally (or not at all). The paper's d_s^p is the mean of d_i over the
    cells of structure s in cell-cycle phase p. Eq. 5 is printed with c; we use κ = 1 − c
    (see :func:`coupling_strength`) so that the sign reads as the notes define it and d lies
    in [−1, 1] whenever both couplings are non-negative.

    Parameters
    ----------
    kappa_membrane, kappa_nucleus : (N,) ndarray
        From :func:`coupling_strength`.

    Returns
    -------
    (N,) ndarray
        NaN where κ^m + κ^n = 0.
    """
    km = np.asarray(kappa_membrane, dtype=np.float64)
    kn = np.asarray(kappa_nucleus, dtype=np.float64)
    if km.shape != kn.shape:
        raise ValueError(f"differential_coupling: shapes differ, {km.shape} vs {kn.shape}")
    total = km + kn
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (km - kn) / total
    d[total == 0] = np.nan
    return d


def _chunked_elbo(
    model: ConditionalBetaVAE, batch: Batch, *, n_samples: int, seed: int, batch_size: int
) -> torch.Tensor:
    """Unweighted ELBO (Eq. 1) per cell, in chunks; the same seed gives the same ε per cell."""
    n = batch["reference"].shape[0]
    generator = torch.Generator(device=_device(model)).manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        chunk = {key: value[start:start + batch_size] for key, value in batch.items()}
        out.append(model.elbo(chunk, n_samples, weighted=False, generator=generator))
    return torch.cat(out)


def swapped_reference_elbos(
    model: ConditionalBetaVAE,
    batch: Batch,
    channel: int,
    *,
    n_swaps: int | None = None,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """ELBO of each structure image with its own vs other cells' reference channel (Eq. 4).

    Cell i keeps its structure x_t^i, its other reference channel and its label; channel
    ``channel`` of x_r is replaced by that of cell j = (i − s) mod N for shifts s, so every
    swap is with another cell of the batch (all N − 1 of them by default). Pass the cells of
    one structure, as the paper permutes "across all other cells with the same structure
    tagged". Real and swapped ELBOs share their random draws (common random numbers), so the
    ratio reflects the swap rather than sampling noise.

    Parameters
    ----------
    model : ConditionalBetaVAE
        Structure model.
    batch : dict
        ``"reference"`` (N, C_r, ...), ``"structure"`` (N, C_t, ...), ``"structure_id"`` (N,).
    channel : int
        Index in x_r of the channel to swap (the membrane or the DNA channel).
    n_swaps : int, optional
        Partners per cell, drawn as distinct shifts; all N − 1 by default.
    n_samples : int
        Draws of z per ELBO (10 in the paper).
    seed : int
        Seed of the draws of z and of the shifts.
    batch_size : int
        Cells per forward pass.

    Returns
    -------
    elbo_real : (N,) ndarray
    elbo_swapped : (N, J) ndarray
        J = ``n_swaps`` or N − 1.
    """
    _require_kind(model, "structure", "swapped_reference_elbos")
    n = batch["reference"].shape[0]
    if n < 2:
        raise ValueError(f"swapped_reference_elbos: needs at least 2 cells to swap between, got {n}")
    if not 0 <= channel < batch["reference"].shape[1]:
        raise ValueError(f"swapped_reference_elbos: channel {channel} out of range for {batch['reference'].shape[1]} reference channels")
    shifts = np.arange(1, n)
    if n_swaps is not None and n_swaps < n - 1:
        shifts = np.sort(np.random.default_rng(seed).choice(shifts, size=n_swaps, replace=False))
    batch = _to(batch, _device(model))
    kwargs = {"n_samples": n_samples, "seed": seed, "batch_size": batch_size}
    with _evaluating(model):
        real = _chunked_elbo(model, batch, **kwargs)
        swapped = []
        for s in shifts:
            reference = batch["reference"].clone()
            reference[:, channel] = torch.roll(batch["reference"][:, channel], int(s), dims=0)
            swapped.append(_chunked_elbo(model, {**batch, "reference": reference}, **kwargs))
    return real.double().cpu().numpy(), torch.stack(swapped, dim=1).double().cpu().numpy()


@dataclass(frozen=True)
class CouplingScores:
    """Per-cell coupling of a structure to membrane and nucleus (Eqs. 4-5); arrays of shape (N,)."""

    kappa_membrane: np.ndarray
    kappa_nucleus: np.ndarray
    differential: np.ndarray


def coupling_scores(
    model: ConditionalBetaVAE,
    batch: Batch,
    *,
    membrane_channel: int = 0,
    nucleus_channel: int = 1,
    n_swaps: int | None = None,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> CouplingScores:
    """Coupling of one structure's placement to cell membrane vs nucleus (Section 6.5, Fig. 5).

    Runs :func:`swapped_reference_elbos` for each reference channel, then
    :func:`coupling_strength` (Eq. 4, as κ = 1 − c) and :func:`differential_coupling`
    (Eq. 5's summand). Average ``differential`` over cells of a cell-cycle phase for d_s^p.

    Parameters
    ----------
    model : ConditionalBetaVAE
        Structure model (any object with the same ``elbo`` method and ``config.kind``).
    batch : dict
        Cells of one structure, as in :func:`swapped_reference_elbos`.
    membrane_channel, nucleus_channel : int
        Their indices in x_r (membrane first, DNA second in the paper's data).
    n_swaps, n_samples, seed, batch_size
        As in :func:`swapped_reference_elbos`.

    Returns
    -------
    CouplingScores
    """
    kwargs = {"n_swaps": n_swaps, "n_samples": n_samples, "seed": seed, "batch_size": batch_size}
    real_m, swapped_m = swapped_reference_elbos(model, batch, membrane_channel, **kwargs)
    real_n, swapped_n = swapped_reference_elbos(model, batch, nucleus_channel, **kwargs)
    kappa_m = coupling_strength(real_m, swapped_m)
    kappa_n = coupling_strength(real_n, swapped_n)
    return CouplingScores(kappa_m, kappa_n, differential_coupling(kappa_m, kappa_n))


# --------------------------------------------------------------------------- perturbations


@dataclass(frozen=True)
class LatentShiftResult:
    """Outcome of :func:`latent_shift_test`."""

    effect: float  # ‖centroid(treated) − centroid(untreated)‖₂, latent units
    direction: np.ndarray  # (D,) centroid(treated) − centroid(untreated), the red arrow of Fig. 6b
    p_value: float  # (1 + #{permuted effect ≥ observed}) / (1 + n_permutations)
    n_permutations: int


def latent_shift_test(
    treated: np.ndarray,
    untreated: np.ndarray,
    *,
    n_permutations: int = 10_000,
    seed: int = 0,
    chunk: int = 500,
) -> LatentShiftResult:
    """Does a perturbation move cells in latent space? Permutation test on centroids (Section 4.5).

    The effect is the Euclidean distance between the centroids of the treated and untreated
    latent means; its null distribution comes from shuffling the treated/untreated labels
    ``n_permutations`` times (10,000 in the paper). The p-value counts the observed labelling
    as one of the permutations, so it is never 0 and is exact-valid under exchangeability.
    Correct for the structure × drug comparisons with :func:`bonferroni`.

    Parameters
    ----------
    treated : (N_t, D) ndarray
        Latent means μ of treated cells.
    untreated : (N_u, D) ndarray
        Latent means μ of untreated cells (same model, same dimensions).
    n_permutations : int
        Label shuffles.
    seed : int
        Seed of the shuffles.
    chunk : int
        Permutations evaluated at once (memory ∝ chunk × (N_t + N_u)).

    Returns
    -------
    LatentShiftResult
    """
    a = np.asarray(treated, dtype=np.float64)
    b = np.asarray(untreated, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"latent_shift_test: need (N_t, D) and (N_u, D) arrays, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("latent_shift_test: both groups need at least one cell")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("latent_shift_test: latent means contain NaN or inf")
    if n_permutations < 1:
        raise ValueError(f"latent_shift_test: n_permutations must be >= 1, got {n_permutations}")
    n_t = len(a)
    pooled = np.concatenate([a, b])  # (N, D)
    n = len(pooled)
    total = pooled.sum(axis=0)  # (D,)
    direction = a.mean(axis=0) - b.mean(axis=0)
    effect = float(np.linalg.norm(direction))

    rng = np.random.default_rng(seed)
    exceed = 0
    done = 0
    while done < n_permutations:
        k = min(chunk, n_permutations - done)
        # A random permutation per row; its first n_t positions form the shuffled "treated".
        ranks = np.argsort(rng.random((k, n)), axis=1)
        mask = np.zeros((k, n))
        np.put_along_axis(mask, ranks[:, :n_t], 1.0, axis=1)
        sum_t = mask @ pooled  # (k, D)
        diff = sum_t / n_t - (total - sum_t) / (n - n_t)
        # The tolerance keeps ties with the observed labelling (e.g. an identical shuffle) counted.
        exceed += int(np.count_nonzero(np.linalg.norm(diff, axis=1) >= effect * (1 - 1e-12)))
        done += k
    p_value = (1 + exceed) / (1 + n_permutations)
    return LatentShiftResult(effect, direction, p_value, n_permutations)


def bonferroni(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Bonferroni-adjusted p-values, min(1, m·p) for m tests (Section 4.5).

    Parameters
    ----------
    p_values : (m,) array-like
        Raw p-values, e.g. one per structure × drug comparison.

    Returns
    -------
    (m,) ndarray
        Compare with the family-wise level α directly.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"bonferroni: expected a 1-D array of p-values, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("bonferroni: p-values must be finite and in [0, 1]")
    return np.minimum(1.0, p * len(p))


# --------------------------------------------------------------------------- rate and distortion


@dataclass(frozen=True)
class RateDistortion:
    """The two terms of the ELBO (Eq. 1) averaged over held-out cells (Section 4.3, Fig. 3a)."""

    rate: float  # mean KL(q(z|x) ‖ p(z)) per image, nats
    distortion: float  # mean Σ(x − x̂)² per image, averaged over draws of z
    kl_per_dimension: np.ndarray  # (D,) mean KL of each latent dimension (Fig. S6)
    n_images: int

    def active_dimensions(self, threshold: float = 0.1) -> int:
        """Latent dimensions carrying more than ``threshold`` nats on average (Fig. S6)."""
        return int(np.count_nonzero(self.kl_per_dimension > threshold))


def rate_distortion(
    model: ConditionalBetaVAE,
    batches: Iterable[Batch],
    *,
    n_samples: int = 1,
    seed: int = 0,
) -> RateDistortion:
    """Rate (KL) and distortion (summed squared error) of a model on a dataset (Section 4.3).

    The paper trains 2D reference models at 25 values of β and plots, on the test set, the
    average of "the two terms of ELBO": the rate KL(q(z|x) ‖ p(z)) and the distortion
    −E_q[log p(x|z)] ≈ Σ(x − x̂)² (Section 6.3). Both are the unweighted terms, so models
    trained at different β are compared on one scale.

    Parameters
    ----------
    model : ConditionalBetaVAE
        Reference or structure model.
    batches : iterable of batch dicts
        As in :meth:`ConditionalBetaVAE.compute_loss`, e.g. the test split in chunks.
    n_samples : int
        Draws of z per image for the distortion (10 in the paper's validation ELBO).
    seed : int
        Seed of the draws.

    Returns
    -------
    RateDistortion
    """
    if n_samples < 1:
        raise ValueError(f"rate_distortion: n_samples must be >= 1, got {n_samples}")
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    kl_sum, recon_sum, kl_dims, n = 0.0, 0.0, None, 0
    with _evaluating(model):
        for batch in batches:
            batch = _to(batch, device)
            x, reference, structure_id = model._unpack(batch)
            mu, logvar = model.encode(x, reference, structure_id)  # (B, D)
            recon = torch.zeros(x.shape[0], device=device, dtype=x.dtype)
            for _ in range(n_samples):
                z = model.reparameterize(mu, logvar, generator)
                recon += summed_squared_error(x, model.decode(z, reference, structure_id))
            per_dim = kl_per_dimension(mu, logvar).double().sum(dim=0).cpu().numpy()
            kl_dims = per_dim if kl_dims is None else kl_dims + per_dim
            kl_sum += float(kl_divergence(mu, logvar).double().sum())
            recon_sum += float(recon.double().sum()) / n_samples
            n += x.shape[0]
    if n == 0:
        raise ValueError("rate_distortion: the dataset yielded no image")
    return RateDistortion(kl_sum / n, recon_sum / n, kl_dims / n, n)


# --------------------------------------------------------------------------- simulated drugs

#: Controlled changes of a structure image that :func:`perturb_structures` applies.
PERTURBATIONS: tuple[str, ...] = ("shrink", "shift", "brighten")


def treatment_split(n: int, *, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """A random set of ``round(fraction · n)`` treated cells among ``n`` (at least one of each).

    Parameters
    ----------
    n : int
        Cells, at least 2.
    fraction : float
        In (0, 1).
    seed : int

    Returns
    -------
    (n,) bool ndarray
        True for treated cells.
    """
    if n < 2:
        raise ValueError(f"treatment_split: needs at least 2 cells (treated and untreated), got {n}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"treatment_split: fraction must lie in (0, 1), got {fraction}")
    k = min(max(int(round(fraction * n)), 1), n - 1)
    treated = np.zeros(n, dtype=bool)
    treated[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return treated


def _centroids(x: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre of each image in grid_sample coordinates, (B, dims) as (x, y[, z])."""
    weight = x.sum(dim=1).clamp_min(0)  # (B, [Z,] Y, X)
    dims = weight.ndim - 1
    total = weight.flatten(1).sum(dim=1).clamp_min(1e-12)  # (B,)
    out = []
    for axis in range(dims, 0, -1):  # X first: grid_sample's coordinate order
        size = weight.shape[axis]
        # align_corners=False: pixel i sits at (2i + 1) / size − 1.
        coords = (2 * torch.arange(size, device=x.device, dtype=x.dtype) + 1) / size - 1
        shape = [1] * weight.ndim
        shape[axis] = size
        out.append((weight * coords.view(shape)).flatten(1).sum(dim=1) / total)
    return torch.stack(out, dim=1)


def perturb_structures(structure: torch.Tensor, kind: str = "shrink", strength: float = 0.5
                       ) -> torch.Tensor:
    """Apply a simulated drug to structure images, a controlled stand-in for Section 4.5.

    The paper's drug screen (Paclitaxel condenses microtubules, Brefeldin A disperses the
    Golgi) is out-of-sample data that a simulated screen lacks; we make its kind of effect
    by hand, on the structure channel only, so the reference (membrane, DNA) is untouched —
    as the paper checks for its drugs ("the reference embedding should not move").

    ``"shrink"``: the structure contracts towards its intensity centroid to a fraction
    ``1 − strength`` of its extent (condensation, like Paclitaxel on microtubules).
    ``"shift"``: the structure moves by ``strength`` × half the image width along x
    (zero fill). ``"brighten"``: intensities scale by ``1 + strength`` (clipped to [0, 1]).

    Parameters
    ----------
    structure : (B, C_t, [Z,] Y, X) tensor
        Structure images x_t, values in [0, 1].
    kind : {"shrink", "shift", "brighten"}
    strength : float
        Size of the effect: in (0, 1) for ``"shrink"``, > 0 otherwise.

    Returns
    -------
    (B, C_t, [Z,] Y, X) tensor
        The perturbed images (a new tensor; the input is left as is).
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"perturb_structures: kind must be one of {PERTURBATIONS}, got {kind!r}")
    if structure.ndim not in (4, 5) or not structure.is_floating_point():
        raise ValueError("perturb_structures: structure must be a float (B, C, [Z,] Y, X) "
                         f"tensor, got {structure.dtype} {tuple(structure.shape)}")
    if kind == "shrink" and not 0.0 < strength < 1.0:
        raise ValueError(f"perturb_structures: shrink strength must lie in (0, 1), got {strength}")
    if strength <= 0:
        raise ValueError(f"perturb_structures: strength must be positive, got {strength}")
    if kind == "brighten":
        return (structure * (1.0 + strength)).clamp(0.0, 1.0)
    b, dims = structure.shape[0], structure.ndim - 2
    eye = torch.eye(dims, device=structure.device, dtype=structure.dtype)
    if kind == "shrink":
        # Output point p samples the input at c + (p − c) / s: the content shrinks by s about c.
        scale = 1.0 - strength
        c = _centroids(structure)  # (B, dims)
        theta = torch.cat([eye.expand(b, dims, dims) / scale,
                           (c * (1.0 - 1.0 / scale)).unsqueeze(-1)], dim=2)
    else:
        # Output point p samples the input at p − d: the content moves by d along x.
        shift = torch.zeros(b, dims, 1, device=structure.device, dtype=structure.dtype)
        shift[:, 0] = -strength
        theta = torch.cat([eye.expand(b, dims, dims), shift], dim=2)
    grid = F.affine_grid(theta, list(structure.shape), align_corners=False)
    return F.grid_sample(structure, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
