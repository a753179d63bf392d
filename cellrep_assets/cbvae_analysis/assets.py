"""cbvae_analysis: the β-VAE analyses of Donovan-Maiye et al. 2022, per dataset.

Reads the two registered factors of the model (each the champion version, else the newest):
the reference model M_R, ``cellrep-<dataset>-cbvae`` (``trained_model/cbvae``), and the
conditional structure model M_T, ``cellrep-<dataset>-cbvae_structure``
(``trained_model/cbvae_structure``). Runs the analyses of :mod:`cellrep_ml.evaluate.cbvae`
on held-out cells, writes one row per number to the warehouse table ``cbvae_results`` and
attaches the figures as metadata.

``model_version`` of a row is the registered version of the model that produced it: the
reference model's for ``latent_mad`` and the perturbation's ``reference`` test, the
structure model's for ``coupling``, ``imputation`` and the ``drug`` / ``sham`` tests; the
rate–distortion sweep trains its own models and carries the reference model's version.

Warehouse access: the analyses read crops and registered models, not the warehouse, and
take minutes (the β sweep trains models), so the asset is not in the ``warehouse`` pool,
which would keep every other writer waiting that long. Its one write goes through
:func:`cellrep_ml.warehouse.replace_partition`, which takes the writers' lock for the
short write and waits for it rather than failing.
"""

# No `from __future__ import annotations`: Dagster resolves Config/resource annotations.

import datetime as dt
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from cellrep_assets.evaluation.assets import LOCK_WAIT_S
from cellrep_assets.features.conditions import DOWNSTREAM
from cellrep_assets.metadata import png_md
from cellrep_assets.partitions import BY_DATASET, dataset_partitions
from cellrep_assets.resources import DataHome
from cellrep_ml.config import crops_dir, warehouse_path
from cellrep_ml.io.registry import get_screen

OWNERS = ["team:cellrep"]
TABLE = "cbvae_results"


class CBVAEAnalysisConfig(dg.Config):
    split: str = "test"
    """Cells analysed (the paper evaluates on the test set)."""
    max_cells_per_structure: int = 32
    """At most this many cells of each structure (protein) are analysed."""
    seed: int = 0
    # --- rate–distortion sweep (Section 4.3, Fig. 3a) ---
    betas: list[float] = [0.05, 0.5, 0.95]
    """β values of the sweep (the paper: 25 evenly spaced in [0, 1]); empty skips it."""
    sweep_steps: int = 30
    """Optimiser steps per sweep model (the paper: 300 epochs)."""
    sweep_config: str = "tiny"
    """Model configuration of the sweep: 'tiny' (CPU) or 'paper'."""
    sweep_lr: float = 1e-3
    """Learning rate of the sweep models; higher than the paper's 2e-4 so a short budget trains."""
    batch_size: int = 16
    # --- coupling (Eqs. 4-5) ---
    coupling_swaps: int = 8
    """Other cells whose reference channel is swapped in per cell (the paper: all of them)."""
    elbo_samples: int = 2
    """Draws of z per ELBO (the paper: 10; real and swapped ELBOs share their draws)."""
    membrane_channel: str = ""
    """Name of the membrane channel; empty = a reference channel named like 'membrane'."""
    # --- simulated drug (Section 4.5) ---
    perturbation: str = "shrink"
    """Simulated drug: 'shrink' (condense), 'shift' or 'brighten' the structure."""
    perturbation_strength: float = 0.5
    n_permutations: int = 10_000
    """Label shuffles of the latent-shift test (the paper: 10,000)."""
    gallery_cells: int = 4


_SCHEMA = {"dataset": pl.Utf8, "model_version": pl.Utf8, "analysis": pl.Utf8, "item": pl.Utf8,
           "metric": pl.Utf8, "value": pl.Float64}


def _long(frame: pl.DataFrame, item: str, metrics: list[str], *,
          prefix: str | None = None) -> pl.DataFrame:
    """(item, metric, value) rows from a wide analysis frame; ``prefix`` names a column whose
    value is prepended to the metric (e.g. the perturbation test: ``drug_p_value``)."""
    keys = [pl.col(item).cast(pl.Utf8).alias("item")]
    if prefix is not None:
        keys.append(pl.col(prefix).cast(pl.Utf8).alias("_prefix"))
    long = frame.select(*keys, *[pl.col(m).cast(pl.Float64) for m in metrics]).unpivot(
        index=[k.meta.output_name() for k in keys], variable_name="metric", value_name="value")
    if prefix is not None:
        long = long.with_columns(pl.concat_str("_prefix", pl.lit("_"), "metric").alias("metric"))
    return long.select("item", "metric", "value")


def _results(dataset: str, tables: list[tuple[str, str, pl.DataFrame]]) -> pl.DataFrame:
    """The ``cbvae_results`` rows of one dataset: one per (analysis, item, metric).

    ``tables`` holds ``(analysis, model version, long frame)`` triples.
    """
    frames = [t.select(pl.lit(dataset).alias("dataset"), pl.lit(version).alias("model_version"),
                       pl.lit(analysis).alias("analysis"), "item", "metric", "value")
              for analysis, version, t in tables if t.height]
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=_SCHEMA)
    return frame.with_columns(pl.lit(dt.datetime.now(dt.UTC)).alias("computed_at"))


def _registered(dataset: str, method: str, kind: str, home: Path):
    """(choice, model) of the registered ``method`` for ``dataset``, checked to be ``kind``."""
    from cellrep_ml import model_registry

    try:
        choice = model_registry.choose_version(dataset, method, home=home)
    except LookupError as err:
        raise dg.Failure(f"cbvae_analysis needs the {kind} model: {err}") from err
    model, _ = model_registry.load_version(choice, home=home)
    if model.config.kind != kind:
        raise dg.Failure(f"{choice.uri} is a {model.config.kind} model; cbvae_analysis reads the "
                         f"{kind} model from {choice.name!r} (retrain trained_model/{method})")
    return choice, model


@dg.asset(
    key=["cbvae_analysis"],
    partitions_def=dataset_partitions,
    deps=[dg.AssetDep(dg.AssetKey(["champion", "cbvae"])),
          dg.AssetDep(dg.AssetKey(["trained_model", "cbvae_structure"])),
          dg.AssetDep(dg.AssetKey(["cell_crops"]), partition_mapping=BY_DATASET)],
    group_name="evaluation",
    kinds={"pytorch", "duckdb"},
    owners=OWNERS,
    code_version="1",
    automation_condition=DOWNSTREAM,
    description="β-VAE analyses (Donovan-Maiye 2022): latent MAD ranking, coupling, imputation, "
                "simulated drug vs sham, rate–distortion over β.",
)
def cbvae_analysis(context: dg.AssetExecutionContext, config: CBVAEAnalysisConfig,
                   home: DataHome) -> dg.MaterializeResult:
    """β-VAE analyses (Donovan-Maiye 2022): latent MAD ranking, coupling, imputation, drug vs sham, rate–distortion."""
    from cellrep_ml.evaluate import cbvae as ev
    from cellrep_ml.warehouse import replace_partition

    record = get_screen(context.partition_key, home=home.path)
    crops = [crops_dir(record.dataset, cl, home.path) for cl in record.cell_lines]
    crops = [c for c in crops if (c / "cells.parquet").is_file()]
    if not crops:
        raise dg.Failure(f"no crops for dataset {record.dataset!r}: materialize cell_crops first")
    choice, model = _registered(record.dataset, "cbvae", "reference", home.path)
    s_choice, structure_model = _registered(record.dataset, "cbvae_structure", "structure",
                                            home.path)
    context.log.info(f"reference {choice.uri} ({choice.via}), structure {s_choice.uri} "
                     f"({s_choice.via})")
    shapes = (tuple(model.config.input_shape), tuple(structure_model.config.input_shape))
    if shapes[0] != shapes[1]:
        raise dg.Failure(f"the reference model {choice.uri} reads {shapes[0]} crops, the "
                         f"structure model {s_choice.uri} {shapes[1]}: train both with the same "
                         "configuration")

    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cellrep-cbvae-") as tmp:
        cells = ev.load_cells(crops, model.config.input_shape, split=config.split,
                              max_per_structure=config.max_cells_per_structure, seed=config.seed)
        if structure_model.config.n_structures != len(cells.structures):
            raise dg.Failure(
                f"the structure model {s_choice.uri} knows {structure_model.config.n_structures} "
                f"structures, the crops hold {len(cells.structures)}: retrain "
                "trained_model/cbvae_structure on these crops")

        # Latent dimensions ranked by MAD (Fig. S3b), in the reference model's latent space.
        ranking = ev.latent_ranking(model, cells)
        # Coupling to nucleus vs membrane (Eqs. 4-5) — to whichever of the two x_r has.
        channels = ev.reference_channel_roles(cells, config.membrane_channel or None)
        if {"nucleus", "membrane"} <= set(channels):
            notes["coupling"] = "membrane vs nucleus (Eq. 5)"
        elif channels:
            missing = "membrane" if "nucleus" in channels else "nucleus"
            notes["coupling"] = (f"membrane vs nucleus not applicable: the reference "
                                 f"({', '.join(cells.reference_channels)}) has no {missing} "
                                 f"channel; coupling to the {', '.join(channels)} only")
        coupling = (ev.coupling_table(structure_model, cells, channels,
                                      n_swaps=config.coupling_swaps,
                                      n_samples=config.elbo_samples, seed=config.seed)
                    if channels else None)
        if not channels:
            notes["coupling"] = ("not applicable: no reference channel is the nucleus or a "
                                 f"membrane ({', '.join(cells.reference_channels)})")
        imputation = ev.imputation_table(structure_model, cells)
        perturbation = ev.perturbation_table(
            structure_model, cells, kind=config.perturbation,
            strength=config.perturbation_strength, n_permutations=config.n_permutations,
            seed=config.seed, reference_model=model)
        gallery = ev.imputation_gallery_png(structure_model, cells, n_cells=config.gallery_cells,
                                            seed=config.seed)
        sweep = None
        if config.betas:
            context.log.info(f"rate–distortion sweep over β = {config.betas}")
            sweep = ev.rate_distortion_sweep(
                crops, config.betas, config=config.sweep_config, steps=config.sweep_steps,
                batch_size=config.batch_size, lr=config.sweep_lr, seed=config.seed,
                split=config.split, out=Path(tmp) / "sweep")
        else:
            notes["rate_distortion"] = "skipped: no β values configured"

    ds, version, s_version = record.dataset, choice.version, s_choice.version
    by_model = pl.when(pl.col("test") == "reference").then(pl.lit(version)).otherwise(
        pl.lit(s_version))
    tables = [
        ("latent_mad", version,
         _long(ranking.with_columns(pl.format("dim_{}", "dim").alias("dim_name")),
               "dim_name", ["rank", "mad", "kl"])),
        ("imputation", s_version,
         _long(imputation, "structure", ["own_sse", "other_sse", "own_better_fraction", "n_cells"])),
        *(("perturbation", v, _long(perturbation.filter(by_model == v), "structure",
                                    ["effect", "p_value", "p_bonferroni", "n_treated",
                                     "n_untreated"], prefix="test"))
          for v in dict.fromkeys([version, s_version])),
    ]
    if coupling is not None:
        tables.append(("coupling", s_version,
                       coupling.select(pl.col("structure").alias("item"), "metric", "value")))
    if sweep is not None:
        tables.append(("rate_distortion", version,
                       _long(sweep.with_columns(pl.format("beta={}", "beta").alias("key")),
                             "key", ["beta", "rate", "distortion", "elbo", "active_dims"])))
    frame = _results(ds, tables)
    n = replace_partition(TABLE, frame, {"dataset": ds}, path=warehouse_path(home.path),
                          timeout=LOCK_WAIT_S)

    detected = perturbation.filter(pl.col("p_bonferroni") < 0.05)
    summary = {t: f"{detected.filter(pl.col('test') == t).height}/"
                  f"{perturbation.filter(pl.col('test') == t).height}"
               for t in perturbation["test"].unique().sort().to_list()}
    metadata = {
        "dataset": ds,
        "registered_model": choice.name,
        "model_version": version,
        "model_via": choice.via,
        "structure_model": s_choice.name,
        "structure_model_version": s_version,
        "structure_model_via": s_choice.via,
        "cells": len(cells),
        "structures": len(cells.structures),
        "rows_written": n,
        "table": TABLE,
        "detected_bonferroni_0_05": dg.MetadataValue.json(summary),
        "perturbation": dg.MetadataValue.md(_markdown(perturbation)),
        "notes": dg.MetadataValue.json(notes),
        "latent_mad": png_md(ev.latent_mad_png(ranking, title="reference latent, ranked by MAD"),
                             "latent MAD"),
        "imputation_gallery": png_md(gallery, "imputation gallery"),
    }
    if coupling is not None and coupling.height:
        metadata["coupling"] = png_md(ev.coupling_png(coupling), "coupling")
    if sweep is not None:
        metadata["rate_distortion"] = png_md(ev.rate_distortion_png(sweep), "rate–distortion")
        metadata["rate_distortion_table"] = dg.MetadataValue.md(_markdown(sweep))
    return dg.MaterializeResult(metadata=metadata)


def _markdown(frame: pl.DataFrame, digits: int = 4) -> str:
    """A small frame as a Markdown table."""
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)

    def fmt(v: object) -> str:
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([head, rule, *body])
