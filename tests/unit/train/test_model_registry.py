"""Picking the registered version to embed with, and loading it back as a cellrep model."""

from __future__ import annotations

import pytest
import torch

from cellrep_ml import model_registry as mr
from cellrep_ml.train import TrainConfig, train

SMALL_PCI = {"source_stages": [[4], [8], [8, 8, 8]], "target_stages": [[4], [4], [4]],
             "decoder_stages": [[8, 8, 8], [8], [4]], "crop_size": 16}


def _train(partitions, out, seed):
    cfg = TrainConfig(method="pci", config="tiny", crops=partitions, out=str(out),
                      model_overrides=dict(SMALL_PCI), epochs=1, batch_size=16, num_workers=0,
                      progress=False, seed=seed)
    return train(cfg)


def test_latest_until_a_champion_is_named_then_the_champion(partitions, tmp_path, mlflow_uri):
    with pytest.raises(LookupError, match="materialize trained_model/pci"):
        mr.choose_version("toy", "pci")
    first = _train(partitions, tmp_path / "a", seed=0)
    second = _train(partitions, tmp_path / "b", seed=1)
    choice = mr.choose_version("toy", "pci")
    assert (choice.version, choice.via, choice.run_id) == ("2", "latest", second.run_id)
    assert mr.champion_version("toy", "pci") is None

    mr.set_champion(choice.name, "1")
    choice = mr.choose_version("toy", "pci")
    assert (choice.version, choice.via, choice.run_id) == ("1", "champion", first.run_id)
    assert mr.choose_version("toy", "pci", version="2").run_id == second.run_id
    with pytest.raises(LookupError, match="version '7' is not registered"):
        mr.choose_version("toy", "pci", version="7")

    mr.set_tags(choice, tags={mr.score_tag("knn"): 0.5})
    assert mr.version_tags(choice.name, "1")["cellrep.score.knn"] == "0.5"


def test_loaded_version_has_the_trained_weights(partitions, tmp_path, mlflow_uri):
    result = _train(partitions, tmp_path / "a", seed=0)
    model, config = mr.load_version(mr.choose_version("toy", "pci"))
    saved = torch.load(result.out / "model.pt", weights_only=True)["model"]
    assert config["method"] == "pci" and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
