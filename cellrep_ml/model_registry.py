"""Which registered model version to use, and loading it back as a cellrep model.

Training registers every finished run as a new version of ``cellrep-<dataset>-<method>``
(:mod:`cellrep_ml.tracking`). Everything downstream (embeddings, features, evaluations)
uses the version aliased ``champion`` for the dataset, else the newest version: a user
who never promotes anything still gets embeddings from their latest model.

The logged MLflow model is an exported feature extractor (fixed layer, tensor signature)
for serving; the platform itself reloads the run's checkpoint (``checkpoint/model.pt``)
and resolved ``config.json`` and rebuilds the architecture with
:func:`cellrep_ml.models.build`, so every layer and method (``features(layer=...)``,
cytoself's code indices, the β-VAE's decoder) stays available.

Every function takes the data home (or reads ``$MLFLOW_TRACKING_URI``) and opens its own
client on explicit URIs: nothing here changes MLflow's process-wide settings.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellrep_ml import tracking

if TYPE_CHECKING:
    import mlflow
    import torch.nn as nn

__all__ = [
    "SCORE_TAG",
    "ModelChoice",
    "champion_version",
    "choose_version",
    "client",
    "load_version",
    "newest_version",
    "rebuild",
    "score_tag",
    "set_champion",
    "set_tags",
    "version_tags",
]

#: Version tag prefix of benchmark scores (``cellrep.score.<metric>``).
SCORE_TAG = "cellrep.score."


def score_tag(metric: str) -> str:
    """The version tag holding a benchmark score, e.g. ``cellrep.score.knn_bacc_k11``."""
    return SCORE_TAG + metric


@dataclass(frozen=True)
class ModelChoice:
    """A registered model version picked for a dataset and method."""

    name: str
    version: str
    run_id: str
    method: str
    dataset: str
    via: str
    """``"champion"`` when the alias picked it, ``"latest"`` otherwise."""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(home: Path | None = None) -> mlflow.MlflowClient:
    """An MLflow client on the data home's tracking store and registry (or the user's)."""
    import mlflow

    uri = tracking.tracking_uri(home)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(c: mlflow.MlflowClient, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(c.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return []


def _newest(c: mlflow.MlflowClient, name: str, dataset: str, method: str) -> Any:
    versions = _versions(c, name)
    if not versions:
        raise LookupError(f"no registered version of {name!r}: materialize "
                          f"trained_model/{method} for dataset {dataset!r} first")
    return max(versions, key=lambda v: int(v.version))


def newest_version(dataset: str, method: str, *, home: Path | None = None) -> str:
    """The highest registered version of ``cellrep-<dataset>-<method>``, alias or not.

    Raises
    ------
    LookupError
        If the model has no registered version.
    """
    name = tracking.registered_model_name(dataset, method)
    return str(_newest(client(home), name, dataset, method).version)


def choose_version(dataset: str, method: str, *, home: Path | None = None,
                   version: str | None = None) -> ModelChoice:
    """The version of ``cellrep-<dataset>-<method>`` to embed with.

    Parameters
    ----------
    dataset, method : str
    home : Path, optional
        Data home (embedded tracking store); default ``$CELLREP_HOME``.
    version : str, optional
        A specific version; default the ``champion`` alias, else the newest version.

    Raises
    ------
    LookupError
        If the model has no registered version (train it first).
    """
    from mlflow.exceptions import MlflowException

    c = client(home)
    name = tracking.registered_model_name(dataset, method)
    via = "pinned"
    if version is None:
        try:
            mv = c.get_model_version_by_alias(name, tracking.CHAMPION)
            via = tracking.CHAMPION
        except MlflowException:
            mv, via = _newest(c, name, dataset, method), "latest"
    else:
        try:
            mv = c.get_model_version(name, str(version))
        except MlflowException as err:
            raise LookupError(f"{name!r} version {version!r} is not registered: "
                              f"{err.message}") from None
    return ModelChoice(name=name, version=str(mv.version), run_id=mv.run_id, method=method,
                       dataset=dataset, via=via)


def champion_version(dataset: str, method: str, *, home: Path | None = None) -> str | None:
    """The version the ``champion`` alias points at, ``None`` when it is unset."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(home).get_model_version_by_alias(
            tracking.registered_model_name(dataset, method), tracking.CHAMPION)
    except MlflowException:
        return None
    return str(mv.version)


def load_version(choice: ModelChoice, *, home: Path | None = None,
                 map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild and load the model of a registered version, in eval mode.

    Returns
    -------
    model : nn.Module
        The method's model class with the run's final weights.
    config : dict
        The run's resolved ``config.json`` (method, model config, data, build kwargs).

    Raises
    ------
    LookupError
        If the run lacks the checkpoint or config (it was not logged by cellrep's trainer).
    """
    import torch

    c = client(home)
    with tempfile.TemporaryDirectory(prefix="cellrep-model-") as tmp:
        try:
            config_path = Path(c.download_artifacts(choice.run_id, "config.json", tmp))
            weights_path = Path(c.download_artifacts(choice.run_id, "checkpoint/model.pt", tmp))
        except Exception as err:  # noqa: BLE001 - any artifact-store error means the same
            raise LookupError(f"{choice.uri} (run {choice.run_id}) has no cellrep checkpoint "
                              f"and config.json: {err}") from err
        config = json.loads(config_path.read_text())
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    return rebuild(config, state["model"]), config


def rebuild(config: dict, state_dict: dict) -> nn.Module:
    """The model a run's resolved ``config`` describes, with ``state_dict``, in eval mode."""
    from cellrep_ml.models import build

    model = build(config["method"], config["model_config_name"], **config["build_kwargs"])
    model.load_state_dict(state_dict)
    return model.eval()


def set_tags(choice_or_name: ModelChoice | str, version: str | None = None,
             tags: dict[str, object] | None = None, *, home: Path | None = None) -> None:
    """Set tags on a registered model version (values stored as text)."""
    name = choice_or_name.name if isinstance(choice_or_name, ModelChoice) else choice_or_name
    version = choice_or_name.version if isinstance(choice_or_name, ModelChoice) else version
    c = client(home)
    for key, value in (tags or {}).items():
        c.set_model_version_tag(name, str(version), key, str(value))


def version_tags(name: str, version: str, *, home: Path | None = None) -> dict[str, str]:
    """Tags of a registered model version."""
    return dict(client(home).get_model_version(name, str(version)).tags)


def set_champion(name: str, version: str, *, home: Path | None = None) -> None:
    """Point the ``champion`` alias of ``name`` at ``version``."""
    client(home).set_registered_model_alias(name, tracking.CHAMPION, str(version))
