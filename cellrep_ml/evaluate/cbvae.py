"""The β-VAE analyses of Donovan-Maiye et al. 2022 on a dataset's crops, as tables and PNGs.

Each function reads cells through the cbvae training task (the same channels, resizing and
structure labels the model was trained with), runs one analysis of
:mod:`cellrep_ml.models.cbvae_analysis`, and returns a polars frame:

* :func:`rate_distortion_sweep` — 2D reference models trained at several β with the real
  training engine; rate and distortion on held-out cells (Section 4.3, Fig. 3a, Fig. S6).
* :func:`latent_ranking` — latent dimensions ranked by mean absolute deviation of μ
  (Fig. S3b) with their mean KL (Fig. S6).
* :func:`coupling_table` — coupling of each structure to nucleus and membrane by swapping
  a reference channel between cells (Eqs. 4-5, Fig. 5).
* :func:`imputation_table` — does imputing a cell's own structure from its reference beat
  imputing another one (Section 4.3.1, Fig. 4b)?
* :func:`perturbation_table` — a simulated drug detected by the latent-shift permutation
  test, a sham split not detected, the reference latent unmoved (Section 4.5, Fig. 6).

PNG figures at the end (``*_png``), in the mould of :mod:`cellrep_ml.evaluate.plots`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import torch

from cellrep_ml.errors import InputError
from cellrep_ml.models import cbvae_analysis as ana
from cellrep_ml.models.cbvae import ConditionalBetaVAE
from cellrep_ml.viz import composite_rgb, figure_png  # also selects the Agg backend

__all__ = [
    "CBVAECells",
    "coupling_png",
    "coupling_table",
    "imputation_gallery_png",
    "imputation_table",
    "latent_mad_png",
    "latent_ranking",
    "load_cells",
    "load_run_model",
    "perturbation_table",
    "rate_distortion_png",
    "rate_distortion_sweep",
    "reference_channel_roles",
    "train_cbvae",
]

_CHUNK = 64  # cells per forward pass


# --------------------------------------------------------------------------- data


@dataclass
class CBVAECells:
    """Cells of one split as the cbvae reads them.

    Attributes
    ----------
    batch : dict of str to tensor
        ``reference`` (N, C_r, [Z,] Y, X), ``structure`` (N, 1, [Z,] Y, X), ``structure_id`` (N,).
    cells : pl.DataFrame
        The cell index rows, in batch order, with ``structure_id``.
    structures : list of str
        Protein (structure) name of each structure id.
    reference_channels : list of str
        Channel names of x_r, in order.
    roles : dict
        The crop store's channel roles (``protein``, ``nucleus``, ``markers``).
    """

    batch: dict[str, torch.Tensor]
    cells: pl.DataFrame
    structures: list[str]
    reference_channels: list[str]
    roles: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.cells.height

    def subset(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch restricted to ``rows`` (positions in this object)."""
        index = torch.as_tensor(np.asarray(rows, np.int64))
        return {k: v[index] for k, v in self.batch.items()}

    def rows_of(self, structure_id: int) -> np.ndarray:
        """Positions of the cells of one structure."""
        return np.flatnonzero(self.batch["structure_id"].numpy() == structure_id)


def load_cells(crops: Sequence[str | Path], input_shape: Sequence[int], *, split: str = "test",
               max_per_structure: int | None = None, seed: int = 0) -> CBVAECells:
    """Read one split of a dataset's crops as batches of the cbvae (reference, structure, label).

    Parameters
    ----------
    crops : sequence of path
        Crops partitions of one dataset (its cell lines), as given to training.
    input_shape : sequence of int
        The model's ``config.input_shape``; crops are resized to it as in training.
    split : {"test", "val", "train"}
        Held-out cells by default (the paper evaluates on the test set).
    max_per_structure : int, optional
        Keep at most this many cells of each structure, drawn with ``seed``.
    seed : int

    Returns
    -------
    CBVAECells

    Raises
    ------
    InputError
        If the split holds no cell.
    """
    from cellrep_ml.train import load_training_data
    from cellrep_ml.train.tasks import CBVAETask

    data = load_training_data(crops)
    task = CBVAETask(data, seed=seed, model_overrides={"kind": "structure"})
    task.input_shape = tuple(int(s) for s in input_shape)
    rows = data.rows(split)
    if rows.size == 0:
        raise InputError(f"the crops have no {split!r} cells to analyse",
                         path=data.partitions[0].index_path,
                         expected=f"cells with split {split!r} in cells.parquet")
    if max_per_structure is not None:
        rng = np.random.default_rng(seed)
        keep = []
        for sid in np.unique(task.structure_id[rows]):
            mine = rows[task.structure_id[rows] == sid]
            if mine.size > max_per_structure:
                mine = np.sort(rng.choice(mine, size=max_per_structure, replace=False))
            keep.append(mine)
        rows = np.sort(np.concatenate(keep))
    parts = [task.load_batch({"row": rows[k:k + _CHUNK]}) for k in range(0, rows.size, _CHUNK)]
    batch = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    cells = (data.cells.filter(pl.col("row").is_in(rows.tolist())).sort("row")
             .with_columns(pl.Series("structure_id", task.structure_id[rows])))
    return CBVAECells(batch, cells, list(task.proteins), list(task.markers), dict(data.roles))


def _chunks(batch: Mapping[str, torch.Tensor], size: int = _CHUNK) -> Iterator[dict[str, torch.Tensor]]:
    n = next(iter(batch.values())).shape[0]
    for start in range(0, n, size):
        yield {k: v[start:start + size] for k, v in batch.items()}


def reference_channel_roles(cells: CBVAECells, membrane: str | None = None) -> dict[str, int]:
    """Which reference channel is the nucleus and which the membrane: ``{role: index in x_r}``.

    The nucleus is the screen's ``nucleus`` role; the membrane is the reference channel named
    ``membrane`` when given, else the first whose name contains "membrane" (the paper's
    reference is membrane + DNA). A role the screen lacks is left out: the 2D OpenCell
    screens image only the nucleus beside the protein.
    """
    names = cells.reference_channels
    out: dict[str, int] = {}
    nucleus = cells.roles.get("nucleus")
    if nucleus in names:
        out["nucleus"] = names.index(nucleus)
    if membrane:
        if membrane not in names:
            raise InputError("the membrane channel is not a reference channel",
                             expected=f"one of {names}", received=repr(membrane))
        out["membrane"] = names.index(membrane)
    else:
        found = [i for i, n in enumerate(names) if "membrane" in n.lower() and n != nucleus]
        if found:
            out["membrane"] = found[0]
    return out


# --------------------------------------------------------------------------- training


def load_run_model(out: str | Path) -> tuple[ConditionalBetaVAE, dict]:
    """The final model of a training run folder (``model.pt``), rebuilt, in eval mode."""
    from cellrep_ml.model_registry import rebuild

    path = Path(out) / "model.pt"
    if not path.is_file():
        raise InputError("no trained model in the run folder", path=path,
                         expected="model.pt written by cellrep_ml.train")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return rebuild(saved["config"], saved["model"]), saved["config"]


def train_cbvae(crops: Sequence[str | Path], out: str | Path, *, kind: str = "reference",
                config: str = "tiny", steps: int = 30, batch_size: int = 16,
                lr: float | None = None, seed: int = 0,
                model_overrides: Mapping[str, Any] | None = None,
                device: str = "auto") -> tuple[ConditionalBetaVAE, dict]:
    """Train a cbvae for ``steps`` optimiser steps with the real engine; no MLflow.

    The engine validates after every epoch and keeps the best epoch's weights (Section 6.4).

    Returns
    -------
    model : ConditionalBetaVAE
        In eval mode, on the CPU.
    config : dict
        The run's resolved configuration.
    """
    from cellrep_ml.train import TrainConfig, train

    if steps < 1:
        raise InputError("steps must be a positive integer", received=str(steps))
    overrides = {**dict(model_overrides or {}), "kind": kind}
    # max_steps ends the run; the epoch count only has to be large enough not to.
    train(TrainConfig(method="cbvae", config=config, crops=[str(c) for c in crops], out=str(out),
                      model_overrides=overrides, epochs=steps, max_steps=steps,
                      batch_size=batch_size, lr=lr, seed=seed, num_workers=0, device=device,
                      track=False, register=False, progress=False, resume=False))
    return load_run_model(out)


# --------------------------------------------------------------------------- analyses


def rate_distortion_sweep(
    crops: Sequence[str | Path],
    betas: Sequence[float],
    *,
    config: str = "tiny",
    steps: int = 30,
    batch_size: int = 16,
    lr: float | None = None,
    seed: int = 0,
    split: str = "test",
    n_samples: int = 1,
    max_cells: int = 256,
    dims: int | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    active_threshold: float = 0.1,
    device: str = "auto",
) -> pl.DataFrame:
    """Rate–distortion trade-off over β of the 2D reference model (Section 4.3, Fig. 3a).

    One reference model M_R per β of Eq. 3, each trained by :func:`cellrep_ml.train.train`
    from the same seed for the same number of steps (the paper: 25 β evenly spaced in
    [0, 1], 300 epochs each); then the unweighted ELBO terms on held-out cells
    (:func:`~cellrep_ml.models.cbvae_analysis.rate_distortion`). As β grows, rate falls,
    distortion rises and fewer latent dimensions stay active (Fig. S6).

    Parameters
    ----------
    crops : sequence of path
        Crops partitions of one dataset.
    betas : sequence of float
        β values in [0, 1].
    config : {"tiny", "paper"}
        Model configuration ("tiny" for a CPU).
    steps, batch_size, lr, seed
        Training budget per model; ``lr=None`` is the paper's 2e-4.
    split : str
        Cells the terms are measured on.
    n_samples : int
        Draws of z per image for the distortion.
    max_cells : int
        At most this many cells of ``split`` are scored.
    dims : {None, 2, 3}
        ``None``: the crops' own dimensionality — on 2D screens (maximum projections, or
        2D by nature) this is the paper's 2D study. Must match the crops.
    model_overrides : mapping, optional
        Other model config fields (e.g. ``latent_dim``).
    out : path, optional
        Folder for the run folders (``beta-<β>/``); a temporary one by default.
    active_threshold : float
        Nats of mean KL above which a latent dimension counts as active.
    device : str
        Training device (``"auto"``: CUDA if available).

    Returns
    -------
    pl.DataFrame
        One row per β: ``beta``, ``rate`` (nats), ``distortion`` (summed squared error),
        ``elbo`` (= −rate − distortion), ``active_dims``, ``steps``, ``n_cells``.
    """
    betas = [float(b) for b in betas]
    if not betas:
        raise InputError("no β values to sweep", expected="at least one β in [0, 1]")
    bad = [b for b in betas if not 0.0 <= b <= 1.0]
    if bad:
        raise InputError("β of Eq. 3 lies in [0, 1]", expected="values in [0, 1]", received=str(bad))
    if max_cells < 1:
        raise InputError("max_cells must be positive", received=str(max_cells))
    overrides = dict(model_overrides or {})
    if dims is not None:
        overrides["dims"] = dims
    rows = []
    with tempfile.TemporaryDirectory(prefix="cellrep-rd-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        cells = None
        for beta in betas:
            model, _ = train_cbvae(crops, root / f"beta-{beta:g}", kind="reference", config=config,
                                   steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                   model_overrides={**overrides, "beta": beta}, device=device)
            if cells is None:
                cells = _reference_cells(crops, model, split, max_cells, seed)
            rd = ana.rate_distortion(model, _chunks(cells), n_samples=n_samples, seed=seed)
            rows.append({"beta": beta, "rate": rd.rate, "distortion": rd.distortion,
                         "elbo": -rd.rate - rd.distortion,
                         "active_dims": rd.active_dimensions(active_threshold),
                         "steps": steps, "n_cells": rd.n_images})
    return pl.DataFrame(rows)


def _reference_cells(crops: Sequence[str | Path], model: ConditionalBetaVAE, split: str,
                     max_cells: int, seed: int) -> dict[str, torch.Tensor]:
    """Up to ``max_cells`` cells of ``split`` as reference-model batches, drawn with ``seed``."""
    cells = load_cells(crops, model.config.input_shape, split=split, seed=seed)
    n = len(cells)
    rows = np.arange(n)
    if n > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))
    return {"reference": cells.subset(rows)["reference"]}


def latent_ranking(model: ConditionalBetaVAE, cells: CBVAECells) -> pl.DataFrame:
    """Latent dimensions ranked by mean absolute deviation of μ from 0 (Fig. S3b, Fig. 2).

    Parameters
    ----------
    model : ConditionalBetaVAE
        Reference or structure model.
    cells : CBVAECells
        Held-out cells (the paper averages over the test set).

    Returns
    -------
    pl.DataFrame
        One row per dimension, most informative first: ``rank`` (1 = largest MAD),
        ``dim``, ``mad`` (mean |μ_d|), ``kl`` (mean KL in nats, Fig. S6).
    """
    mu, logvar = ana.encode_dataset(model, _chunks(cells.batch))
    order, mad = ana.rank_dimensions(mu)
    kl = ana.mean_kl_per_dimension(mu, logvar)
    return pl.DataFrame({"rank": np.arange(1, order.size + 1), "dim": order,
                         "mad": mad[order], "kl": kl[order]})


def coupling_table(model: ConditionalBetaVAE, cells: CBVAECells, channels: Mapping[str, int], *,
                   n_swaps: int | None = 8, n_samples: int = 4, seed: int = 0,
                   min_cells: int = 3) -> pl.DataFrame:
    """Coupling of each structure to each reference channel, and membrane vs nucleus (Eqs. 4-5).

    For every structure with at least ``min_cells`` cells, the ELBO of each cell with its own
    reference is compared with the ELBO after swapping one reference channel with other
    cells of the same structure (:func:`~cellrep_ml.models.cbvae_analysis.swapped_reference_elbos`);
    κ = 1 − c per cell, averaged over the structure's cells. With both a nucleus and a
    membrane channel the differential coupling d = (κ_m − κ_n)/(κ_m + κ_n) follows (Eq. 5:
    +1 membrane-coupled, −1 nucleus-coupled); averaging d over all cells of a structure
    (the paper also splits by cell-cycle phase, which our screens do not record).

    Parameters
    ----------
    model : ConditionalBetaVAE
        Structure model.
    cells : CBVAECells
    channels : mapping of str to int
        Role → index in x_r, e.g. ``{"nucleus": 0, "membrane": 1}``
        (:func:`reference_channel_roles`).
    n_swaps, n_samples, seed
        As in :func:`~cellrep_ml.models.cbvae_analysis.swapped_reference_elbos`
        (the paper: every other cell, 10 draws of z).
    min_cells : int
        Structures with fewer cells are left out (at least 2 are needed to swap).

    Returns
    -------
    pl.DataFrame
        ``structure``, ``metric`` (``kappa_<role>`` or ``differential``), ``value`` (mean over
        cells, NaN-free cells only), ``n_cells``.
    """
    if not channels:
        raise InputError("no reference channel to measure coupling to",
                         expected="a nucleus and/or membrane channel in x_r")
    rows = []
    for sid, name in enumerate(cells.structures):
        idx = cells.rows_of(sid)
        if idx.size < max(min_cells, 2):
            continue
        batch = cells.subset(idx)
        swaps = None if n_swaps is None else min(n_swaps, idx.size - 1)
        kappas = {}
        for role, channel in channels.items():
            real, swapped = ana.swapped_reference_elbos(model, batch, channel, n_swaps=swaps,
                                                        n_samples=n_samples, seed=seed)
            kappas[role] = ana.coupling_strength(real, swapped)
            rows.append({"structure": name, "metric": f"kappa_{role}",
                         "value": float(np.nanmean(kappas[role])), "n_cells": int(idx.size)})
        if {"membrane", "nucleus"} <= set(kappas):
            d = ana.differential_coupling(kappas["membrane"], kappas["nucleus"])
            value = float(np.nanmean(d)) if np.isfinite(d).any() else math.nan
            rows.append({"structure": name, "metric": "differential", "value": value,
                         "n_cells": int(idx.size)})
    return pl.DataFrame(rows, schema={"structure": pl.Utf8, "metric": pl.Utf8,
                                      "value": pl.Float64, "n_cells": pl.Int64})


def imputation_table(model: ConditionalBetaVAE, cells: CBVAECells, *,
                     max_cells: int = 8) -> pl.DataFrame:
    """Is a cell's own structure imputed closer to the real image than other structures?

    Every structure is imputed into each cell at the conditional prior's mean
    (:func:`~cellrep_ml.models.cbvae_analysis.impute_structures`, Section 4.3.1). A model
    that learned where each structure goes places the cell's own structure closer (squared
    error) to what was imaged than the other structures: ``own_better_fraction`` is the
    share of other structures whose imputation is farther, 0.5 at chance.

    Returns
    -------
    pl.DataFrame
        ``structure``, ``n_cells``, ``own_sse`` (mean Σ(x_t − x̂_t)² with the true label),
        ``other_sse`` (mean over the other labels), ``own_better_fraction``.
    """
    n_struct = model.config.n_structures
    rows = []
    for sid, name in enumerate(cells.structures):
        idx = cells.rows_of(sid)[:max_cells]
        if idx.size == 0:
            continue
        batch = cells.subset(idx)
        imputed = ana.impute_structures(model, batch["reference"]).cpu()  # (B, T, C, ...)
        sse = (imputed - batch["structure"].unsqueeze(1)).pow(2).flatten(2).sum(dim=2)  # (B, T)
        own = sse[:, sid]
        others = torch.cat([sse[:, :sid], sse[:, sid + 1:]], dim=1)
        row = {"structure": name, "n_cells": int(idx.size), "own_sse": float(own.mean()),
               "other_sse": float(others.mean()) if n_struct > 1 else math.nan,
               "own_better_fraction": (float((others > own.unsqueeze(1)).double().mean())
                                       if n_struct > 1 else math.nan)}
        rows.append(row)
    return pl.DataFrame(rows, schema={"structure": pl.Utf8, "n_cells": pl.Int64,
                                      "own_sse": pl.Float64, "other_sse": pl.Float64,
                                      "own_better_fraction": pl.Float64})


def perturbation_table(
    model: ConditionalBetaVAE,
    cells: CBVAECells,
    *,
    kind: str = "shrink",
    strength: float = 0.5,
    fraction: float = 0.5,
    n_permutations: int = 10_000,
    seed: int = 0,
    min_cells: int = 4,
    reference_model: ConditionalBetaVAE | None = None,
) -> pl.DataFrame:
    """A simulated drug moves the structure latent; a sham split and the reference do not.

    For each structure with at least ``min_cells`` cells (Section 4.5, Fig. 6):

    * ``drug``: a random ``fraction`` of its cells is "treated" — its structure images changed
      by :func:`~cellrep_ml.models.cbvae_analysis.perturb_structures` — and the centroid of
      their latent means μ_t is compared with the untreated cells' by the permutation test
      of :func:`~cellrep_ml.models.cbvae_analysis.latent_shift_test` (10,000 shuffles in
      the paper);
    * ``sham``: the same test on the unperturbed cells split at random (another seed) —
      a null drug, which should not be detected;
    * ``reference`` (with ``reference_model``): the treated vs untreated split of ``drug``
      in the reference latent μ_r — the drug leaves the reference untouched, and the paper
      requires the reference embedding not to move before reading the conditional one.

    p-values are Bonferroni-corrected per test over the structure × {drug, sham}
    comparisons (the paper corrects over structure × drug); the reference rows among
    themselves.

    Returns
    -------
    pl.DataFrame
        ``structure``, ``test``, ``n_treated``, ``n_untreated``, ``effect`` (centroid
        distance, latent units), ``p_value``, ``p_bonferroni``.
    """
    ana._require_kind(model, "structure", "perturbation_table")
    if reference_model is not None:
        ana._require_kind(reference_model, "reference", "perturbation_table(reference_model=)")
    rows = []
    for sid, name in enumerate(cells.structures):
        idx = cells.rows_of(sid)
        if idx.size < max(min_cells, 2):
            continue
        batch = cells.subset(idx)
        treated = ana.treatment_split(idx.size, fraction=fraction, seed=seed + 1_000 * sid)
        sham = ana.treatment_split(idx.size, fraction=fraction, seed=seed + 1_000 * sid + 1)
        drugged = dict(batch)
        drugged["structure"] = batch["structure"].clone()
        mask = torch.as_tensor(treated)
        drugged["structure"][mask] = ana.perturb_structures(batch["structure"][mask], kind, strength)
        mu_drug, _ = ana.encode_dataset(model, _chunks(drugged))
        mu_real, _ = ana.encode_dataset(model, _chunks(batch))
        tests = {"drug": (mu_drug, treated), "sham": (mu_real, sham)}
        if reference_model is not None:
            mu_ref, _ = ana.encode_dataset(reference_model, _chunks({"reference": batch["reference"]}))
            tests["reference"] = (mu_ref, treated)
        for test, (mu, split) in tests.items():
            result = ana.latent_shift_test(mu[split], mu[~split], n_permutations=n_permutations,
                                           seed=seed)
            rows.append({"structure": name, "test": test, "n_treated": int(split.sum()),
                         "n_untreated": int((~split).sum()), "effect": result.effect,
                         "p_value": result.p_value})
    frame = pl.DataFrame(rows, schema={"structure": pl.Utf8, "test": pl.Utf8,
                                       "n_treated": pl.Int64, "n_untreated": pl.Int64,
                                       "effect": pl.Float64, "p_value": pl.Float64})
    family = np.where(frame["test"].to_numpy() == "reference", "reference", "drug")
    adjusted = np.ones(frame.height)
    for f in np.unique(family):
        m = family == f
        adjusted[m] = ana.bonferroni(frame["p_value"].to_numpy()[m])
    return frame.with_columns(pl.Series("p_bonferroni", adjusted, dtype=pl.Float64))


# --------------------------------------------------------------------------- figures


def rate_distortion_png(sweep: pl.DataFrame, *, title: str | None = None) -> bytes:
    """Distortion against rate, one point per β, and both terms against β (Fig. 3a)."""
    if sweep.height == 0:
        raise InputError("the rate–distortion sweep is empty", expected="one row per β")
    s = sweep.sort("beta")
    beta, rate, dist = (s[c].to_numpy() for c in ("beta", "rate", "distortion"))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(rate, dist, marker="o", color="0.3")
    for b, r, d in zip(beta, rate, dist, strict=True):
        ax1.annotate(f"β={b:g}", (r, d), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax1.set_xlabel("rate: KL(q(z|x) ‖ p(z)) [nats]")
    ax1.set_ylabel("distortion: Σ(x − x̂)²")
    ax2.plot(beta, rate, marker="o", label="rate")
    ax2.set_xlabel("β (Eq. 3)")
    ax2.set_ylabel("rate [nats]")
    twin = ax2.twinx()
    twin.plot(beta, dist, marker="s", color="tab:red", label="distortion")
    twin.set_ylabel("distortion", color="tab:red")
    ax2.legend(handles=[*ax2.get_lines(), *twin.get_lines()], fontsize=7, frameon=False)
    fig.suptitle(title or "Rate–distortion of the 2D reference model over β")
    fig.tight_layout()
    return figure_png(fig)


def latent_mad_png(ranking: pl.DataFrame, *, top: int = 32, title: str | None = None) -> bytes:
    """Mean absolute deviation of each latent dimension, sorted (Fig. S3b); top ones labelled."""
    if ranking.height == 0:
        raise InputError("the latent ranking is empty", expected="one row per dimension")
    r = ranking.sort("rank").head(top)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * r.height + 1.5), 3.2))
    ax.bar(np.arange(r.height), r["mad"].to_numpy(), color="tab:blue")
    ax.set_xticks(np.arange(r.height), [f"μ{d}" for d in r["dim"].to_list()], rotation=90,
                  fontsize=7)
    ax.set_ylabel("mean |μ_d| (test cells)")
    ax.set_xlabel("latent dimension, ranked by mean absolute deviation")
    ax.set_title(title or "Latent dimensions ranked by MAD")
    return figure_png(fig)


def coupling_png(coupling: pl.DataFrame, *, title: str | None = None) -> bytes:
    """κ of each structure to each reference channel (bars), and d when present (Fig. 5)."""
    if coupling.height == 0:
        raise InputError("the coupling table is empty", expected="rows of coupling_table")
    kappa = coupling.filter(pl.col("metric").str.starts_with("kappa_"))
    structures = sorted(kappa["structure"].unique().to_list())
    roles = sorted(kappa["metric"].unique().to_list())
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(structures) + 2), 3.4))
    width = 0.8 / max(len(roles), 1)
    x = np.arange(len(structures))
    for k, metric in enumerate(roles):
        values = dict(kappa.filter(pl.col("metric") == metric).select("structure", "value").iter_rows())
        ax.bar(x + k * width, [values.get(s, np.nan) for s in structures], width,
               label=metric.replace("kappa_", "κ "))
    diff = dict(coupling.filter(pl.col("metric") == "differential")
                .select("structure", "value").iter_rows())
    if diff:
        for i, s in enumerate(structures):
            if s in diff and np.isfinite(diff[s]):
                ax.annotate(f"d={diff[s]:+.2f}", (i, 0), textcoords="offset points",
                            xytext=(0, -24), ha="center", fontsize=6)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xticks(x + width * (len(roles) - 1) / 2, structures, rotation=90, fontsize=7)
    ax.set_ylabel("κ = 1 − c (Eq. 4)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "Coupling of each structure to the reference channels")
    return figure_png(fig)


def imputation_gallery_png(model: ConditionalBetaVAE, cells: CBVAECells, *, n_cells: int = 4,
                           n_structures: int = 4, seed: int = 0) -> bytes:
    """Real cells beside imputed structures (Fig. 4b): reference, real x_t, imputed x̂_t.

    One row per cell (of distinct structures where possible); columns: the reference
    channels, the imaged structure, its imputation with the cell's own label, then the
    imputations of up to ``n_structures - 1`` other structures, all at the prior mean z = 0.
    3D images are shown as maximum projections over z.
    """
    ana._require_kind(model, "structure", "imputation_gallery_png")
    rng = np.random.default_rng(seed)
    picks = []
    for sid in rng.permutation(len(cells.structures)):
        idx = cells.rows_of(int(sid))
        if idx.size:
            picks.append(int(rng.choice(idx)))
        if len(picks) == n_cells:
            break
    if not picks:
        raise InputError("no cell to show", expected="at least one cell in CBVAECells")
    batch = cells.subset(np.asarray(picks))
    own = batch["structure_id"].tolist()
    others = list(range(len(cells.structures)))
    ncols = 3 + max(n_structures - 1, 0)
    fig, axes = plt.subplots(len(picks), ncols, figsize=(1.5 * ncols, 1.55 * len(picks)),
                             squeeze=False)
    roles = ["nucleus" if n == cells.roles.get("nucleus") else "marker"
             for n in cells.reference_channels]

    def show(ax, img: np.ndarray, label: str | None, cmap: str = "gray") -> None:
        img = img.max(axis=0) if img.ndim == 3 else img
        ax.imshow(img, cmap=cmap, vmin=0, vmax=max(float(img.max()), 1e-6))
        ax.set_xticks([])
        ax.set_yticks([])
        if label:
            ax.set_title(label, fontsize=6)

    for r, sid in enumerate(own):
        chosen = [sid] + [s for s in rng.permutation(others).tolist() if s != sid][:n_structures - 1]
        imputed = ana.impute_structures(model, batch["reference"][r:r + 1], chosen)[0].cpu()
        ref = batch["reference"][r].numpy()
        axes[r, 0].imshow(composite_rgb(ref, roles))
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_title("reference", fontsize=6)
        show(axes[r, 1], batch["structure"][r, 0].numpy(), f"real {cells.structures[sid]}")
        for c, t in enumerate(chosen):
            label = f"imputed {cells.structures[t]}" + (" (own)" if t == sid else "")
            show(axes[r, 2 + c], imputed[c, 0].numpy(), label, cmap="viridis")
        for c in range(2 + len(chosen), ncols):
            axes[r, c].axis("off")
    fig.suptitle("Imputation gallery: structures generated into real cell geometries", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)
