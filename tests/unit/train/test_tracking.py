"""MLflow: where runs go, what a training run records, the registered version's tags."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pytest
import torch

from cellrep_ml import tracking
from cellrep_ml.train import TrainConfig, load_training_data, train

# A very narrow PCI (as in test_engine): real model code, seconds to train.
SMALL_PCI = {"source_stages": [[4], [8], [8, 8, 8]], "target_stages": [[4], [4], [4]],
             "decoder_stages": [[8, 8, 8], [8], [4]], "crop_size": 16}


def test_default_uri_is_the_data_homes_sqlite(monkeypatch, _isolated_home):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{(_isolated_home.resolve() / 'mlflow.db').as_posix()}"
    assert tracking.artifact_location() == (_isolated_home.resolve() / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking.tracking_uri() == "http://tracking:5000"
    assert tracking.artifact_location() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////data/x/mlflow.db")
    assert tracking.artifact_location() == "file:///data/x/mlruns"


def test_embedded_store_follows_the_data_home(tmp_path, monkeypatch):
    """mlflow mirrors set_tracking_uri into $MLFLOW_TRACKING_URI; a second data home in the
    same process must still get its own store, and artifacts never go to ./mlruns."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tracking.configure(tmp_path / "home1")
    assert os.environ.get("MLFLOW_TRACKING_URI") == first  # what mlflow did
    second = tracking.configure(tmp_path / "home2")
    assert second.endswith("home2/mlflow.db") and mlflow.get_tracking_uri() == second
    assert tracking.artifact_location(tmp_path / "home2") == (tmp_path / "home2" / "mlruns").as_uri()
    experiment = mlflow.get_experiment(tracking.ensure_experiment("cellrep-x", tmp_path / "home2"))
    assert experiment.artifact_location == (tmp_path / "home2" / "mlruns").as_uri()


def test_names_and_flattening():
    assert tracking.registered_model_name("Open Cell", "pci") == "cellrep-open_cell-pci"
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "None"}
    assert "torch" in tracking.package_versions()


def test_training_run_is_logged_and_registered(partitions, tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)  # to see that nothing is written to ./mlruns
    cfg = TrainConfig(method="pci", config="tiny", crops=partitions, out=str(tmp_path / "run"),
                      model_overrides=dict(SMALL_PCI), epochs=2, batch_size=16, num_workers=0,
                      progress=False, seed=0)
    def kill(epoch: int, step: int) -> None:  # 3 steps per epoch: dies in epoch 2
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=kill)
    killed = mlflow.MlflowClient(mlflow_uri).search_runs(
        [mlflow.get_experiment_by_name("cellrep-toy").experiment_id])
    assert [r.info.status for r in killed] == ["KILLED"]
    result = train(cfg)  # resumes the checkpoint and the same MLflow run
    assert result.run_id == killed[0].info.run_id
    assert result.model_version == "1"
    assert result.model_name == "cellrep-toy-pci"

    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "pci" and run.data.params["train.batch_size"] == "16"
    assert run.data.tags["cellrep.data_version"] == load_training_data(partitions).data_version()
    assert "version.torch" in run.data.tags
    for key in ("train/loss", "val/loss", "throughput/pairs_per_s"):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    assert not (tmp_path / "mlruns").exists()
    assert (tmp_path / "mlflow" / "mlruns").is_dir()  # beside the tmp database
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.json", "metrics.jsonl", "checkpoint"} <= artifacts

    version = client.get_model_version("cellrep-toy-pci", "1")
    assert version.run_id == result.run_id
    assert version.tags["partitions"] == "toy/a,toy/b"
    assert version.tags["data_version"] == run.data.tags["cellrep.data_version"]

    # The registered model computes features with the logged signature.
    loaded = mlflow.pytorch.load_model("models:/cellrep-toy-pci/1")
    x = torch.rand(3, 2, 16, 16)
    feats = loaded(x)
    assert feats.shape == (3, 8)  # conv3 width of the small PCI (2 markers → "conv3")
    spec = mlflow.models.get_model_info("models:/cellrep-toy-pci/1").signature.inputs.inputs[0]
    assert spec.name == "source" and tuple(spec.shape) == (-1, 2, 16, 16)
    assert np.isfinite(feats.detach().numpy()).all()

    tracking.configure()
    tracking.set_champion("cellrep-toy-pci", result.model_version)
    assert str(client.get_model_version_by_alias("cellrep-toy-pci", "champion").version) == "1"


def test_spectral_norm_is_baked_in_for_logging():
    """cbvae's spectral-norm parametrizations can be neither exported nor pickled; the
    logged copy holds their current values and computes the same features."""
    from torch.nn.utils import parametrize

    from cellrep_ml.models import build
    from cellrep_ml.train.export import feature_extractor, plain_copy

    model = build("cbvae", "tiny", protein_channels=1, marker_channels=2, dims=2).eval()
    plain = plain_copy(model)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert any(parametrize.is_parametrized(m) for m in model.modules())  # original untouched
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(feature_extractor(plain, ["reference"])(x),
                                   feature_extractor(model, ["reference"])(x))
