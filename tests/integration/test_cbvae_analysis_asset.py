"""cbvae_analysis on a tiny simulated screen with the registered reference and structure cbvae."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch

from cellrep_assets.cbvae_analysis import cbvae_analysis, cbvae_analysis_assets
from cellrep_assets.partitions import dataset_partitions
from cellrep_assets.resources import DataHome
from cellrep_ml.config import crops_dir, partition_key, raw_dir, warehouse_path
from cellrep_ml.io.ingest import ingest_partition
from cellrep_ml.io.registry import register_screen
from cellrep_ml.io.screen_config import ScreenConfig
from cellrep_ml.segment import crop_partition
from cellrep_ml.warehouse import read_table

# Small budgets: the test checks the wiring, the unit tests check the science.
FAST = {"betas": [0.1, 0.9], "sweep_steps": 4, "n_permutations": 200,
        "coupling_swaps": 3, "elbo_samples": 1, "max_cells_per_structure": 8, "gallery_cells": 2}


def _train(method: str, crops: list, home: Path, dataset: str) -> str:
    from cellrep_ml.train import TrainConfig, train

    result = train(TrainConfig(method=method, config="tiny", crops=crops,
                               out=str(home / "models" / method), dataset=dataset,
                               max_steps=4, epochs=2, batch_size=16, num_workers=0,
                               progress=False))
    return result.model_version


@pytest.fixture
def reference_only(tiny_screen, _isolated_home, monkeypatch):
    """The tiny screen registered, cropped, and a tiny reference cbvae registered in MLflow."""
    home = _isolated_home
    # The training run and the asset must share the data home's tracking store; setting the
    # variable (rather than relying on the default) keeps MLflow globals from leaking.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(home / 'mlflow.db').as_posix()}")
    record = register_screen(tiny_screen / "manifest.csv", home=home)
    config = ScreenConfig.read(record.config_path)
    crops = []
    for line in record.cell_lines:
        ingested = ingest_partition(Path(record.manifest_path), config, line,
                                    raw_dir(record.dataset, line, home))
        out = crops_dir(record.dataset, line, home)
        crop_partition(pl.read_parquet(ingested.field_index_path), config, out)
        crops.append(out)
    assert _train("cbvae", crops, home, record.dataset) == "1"
    return home, record, crops


@pytest.fixture
def trained(reference_only):
    """... and the structure model registered beside it, twice (versions 1 and 2)."""
    home, record, crops = reference_only
    assert _train("cbvae_structure", crops, home, record.dataset) == "1"
    # A second version with other weights: the analysis must read the newest.
    from cellrep_ml.train import TrainConfig, train

    again = train(TrainConfig(method="cbvae_structure", config="tiny", crops=crops,
                              out=str(home / "models" / "structure-2"), dataset=record.dataset,
                              max_steps=2, epochs=1, batch_size=16, num_workers=0, seed=1,
                              progress=False))
    assert again.model_version == "2"
    return home, record


def _materialize(home: Path, dataset_key: str, *, raise_on_error: bool = True,
                 **config) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(dataset_partitions.name, [dataset_key])
    return dg.materialize(
        cbvae_analysis_assets, partition_key=dataset_key, instance=instance,
        resources={"home": DataHome(root=str(home))},
        run_config={"ops": {"cbvae_analysis": {"config": {**FAST, **config}}}},
        raise_on_error=raise_on_error)


def test_asset_spec():
    spec = cbvae_analysis
    assert spec.key == dg.AssetKey(["cbvae_analysis"])
    assert spec.group_names_by_key[spec.key] == "evaluation"
    deps = {d.asset_key for d in spec.specs_by_key[spec.key].deps}
    assert deps == {dg.AssetKey(["champion", "cbvae"]),
                    dg.AssetKey(["trained_model", "cbvae_structure"]), dg.AssetKey(["cell_crops"])}
    assert spec.op.pool is None  # minutes of compute must not hold up the warehouse writers
    assert spec.partitions_def.name == dataset_partitions.name


@pytest.mark.slow
def test_writes_every_analysis_and_replaces_its_partition(trained):
    home, record = trained
    torch.set_num_threads(1)
    key = partition_key(record.dataset)
    result = _materialize(home, key)
    assert result.success
    meta = result.asset_materializations_for_node("cbvae_analysis")[0].metadata
    assert meta["registered_model"].value == f"cellrep-{key}-cbvae"
    assert meta["model_version"].value == "1"
    # The registered structure model (newest version: no champion), not one fitted here.
    assert meta["structure_model"].value == f"cellrep-{key}-cbvae_structure"
    assert (meta["structure_model_version"].value, meta["structure_model_via"].value) == (
        "2", "latest")
    for name in ("latent_mad", "imputation_gallery", "coupling", "rate_distortion"):
        assert meta[name].value.startswith("![") and "data:image/png;base64," in meta[name].value
    notes = meta["notes"].value
    # OpenCell images the nucleus only: coupling to the membrane is not applicable.
    assert "not applicable" in notes["coupling"] and "nucleus" in notes["coupling"]

    table = read_table("SELECT * FROM cbvae_results WHERE dataset = $d", {"d": record.dataset},
                       path=warehouse_path(home))
    assert set(table["analysis"].unique()) == {"latent_mad", "imputation", "perturbation",
                                               "coupling", "rate_distortion"}
    # Each row carries the version of the model behind it (reference 1, structure 2).
    versions = dict(table.group_by("analysis").agg(pl.col("model_version").unique().sort())
                    .select("analysis", pl.col("model_version").list.join(",")).iter_rows())
    assert versions == {"latent_mad": "1", "rate_distortion": "1", "imputation": "2",
                        "coupling": "2", "perturbation": "1,2"}
    pert_versions = table.filter(pl.col("analysis") == "perturbation").group_by(
        pl.col("metric").str.split("_").list.first()).agg(pl.col("model_version").unique())
    assert {t: sorted(v) for t, v in pert_versions.iter_rows()} == {
        "drug": ["2"], "sham": ["2"], "reference": ["1"]}
    assert table["computed_at"].null_count() == 0
    latent = table.filter(pl.col("analysis") == "latent_mad")
    assert latent.filter(pl.col("metric") == "rank").height == 16  # tiny latent_dim
    rd = table.filter(pl.col("analysis") == "rate_distortion")
    assert sorted(rd.filter(pl.col("metric") == "beta")["value"].to_list()) == pytest.approx([0.1, 0.9])
    assert set(table.filter(pl.col("analysis") == "coupling")["metric"]) == {"kappa_nucleus"}
    pert = table.filter(pl.col("analysis") == "perturbation")
    assert {"drug_p_value", "sham_p_value", "reference_p_value"} <= set(pert["metric"])
    p = pert.filter(pl.col("metric").str.ends_with("_p_value"))["value"]
    assert ((p > 0) & (p <= 1)).all()

    # Materializing again replaces the dataset's rows: without β values, no sweep rows remain.
    assert _materialize(home, key, betas=[]).success
    again = read_table("cbvae_results", path=warehouse_path(home))
    assert "rate_distortion" not in set(again["analysis"])
    assert again.filter(pl.col("analysis") == "latent_mad").height == latent.height


@pytest.mark.slow
def test_without_a_registered_structure_model_it_fails_and_says_what_to_train(reference_only):
    home, record, _ = reference_only
    key = partition_key(record.dataset)
    result = _materialize(home, key, raise_on_error=False, betas=[])
    assert not result.success
    message = result.failure_data_for_node("cbvae_analysis").error.message
    assert f"cellrep-{key}-cbvae_structure" in message
    assert "materialize trained_model/cbvae_structure" in message
    assert not warehouse_path(home).exists()  # nothing written
