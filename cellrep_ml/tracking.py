"""MLflow helpers: where runs go, what every run records, how models are registered.

By default tracking is embedded: a SQLite database ``<data home>/mlflow.db`` with
artifacts under ``<data home>/mlruns`` (set explicitly, so nothing lands in a ``./mlruns``
of whatever folder a command runs from). Setting ``MLFLOW_TRACKING_URI`` switches to a
tracking server with no code change; the server then decides where artifacts go.

Models are registered as ``cellrep-<dataset>-<method>``; the alias ``champion`` marks the
version that embeddings use (:func:`set_champion`).

Examples
--------
>>> from cellrep_ml import tracking
>>> tracking.registered_model_name("OpenCell", "cytoself")
'cellrep-opencell-cytoself'
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from cellrep_ml.config import data_home, partition_key

__all__ = [
    "CHAMPION",
    "artifact_location",
    "configure",
    "ensure_experiment",
    "flatten",
    "git_revision",
    "log_feature_model",
    "log_params",
    "package_versions",
    "register_model",
    "registered_model_name",
    "set_champion",
    "tracking_uri",
]

#: Alias of the registered model version that embeddings are computed with.
CHAMPION = "champion"

# Usage telemetry would call out of training pods and laptops alike; a user may still opt
# in by setting the variable. Set before mlflow is imported anywhere through this module.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Distributions whose versions every run records (those a result depends on).
_PACKAGES = ("cellrep", "torch", "numpy", "zarr", "polars", "mlflow", "scikit-image", "scipy")


# ``mlflow.set_tracking_uri`` also writes the URI into ``$MLFLOW_TRACKING_URI``; the
# embedded URIs this module set are remembered so that they are not mistaken for a user's
# server on the next call (e.g. with another data home in the same process).
_EMBEDDED: set[str] = set()


def _user_uri() -> str | None:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _EMBEDDED else None


def tracking_uri(home: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if the user set it, else ``sqlite:///<data home>/mlflow.db``."""
    return _user_uri() or f"sqlite:///{((home or data_home()) / 'mlflow.db').as_posix()}"


def artifact_location(home: Path | None = None) -> str | None:
    """Artifact root of new experiments.

    ``<data home>/mlruns`` for the embedded store; ``mlruns`` beside the database when
    ``$MLFLOW_TRACKING_URI`` names another SQLite file (MLflow would otherwise use
    ``./mlruns`` of the working directory); ``None`` (the server decides) for a server.
    """
    user = _user_uri()
    if user is None:
        return ((home or data_home()) / "mlruns").resolve().as_uri()
    if user.startswith("sqlite:///"):
        return (Path(user.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


def configure(home: Path | None = None) -> str:
    """Point MLflow (tracking and registry) at :func:`tracking_uri`; return the URI."""
    import mlflow

    uri = tracking_uri(home)
    if not _user_uri():
        _EMBEDDED.add(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, home: Path | None = None) -> str:
    """Id of experiment ``name``, created with the data home's artifact root if new."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location(home))


def registered_model_name(dataset: str, method: str) -> str:
    """``cellrep-<dataset>-<method>`` with the dataset sanitised like a partition key."""
    return f"cellrep-{partition_key(dataset)}-{partition_key(method)}"


def git_revision(path: str | Path | None = None) -> str | None:
    """Commit of the git checkout holding ``path`` (default: this package), with a
    ``-dirty`` suffix for uncommitted changes; ``None`` outside a git repository."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a trained model depends on, and Python's."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b": "value"}`` strings, as MLflow params want them."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            # MLflow caps a param value at 6,000 characters.
            out[name] = str(value)[:6000]
    return out


def log_params(params: Mapping[str, Any], *, chunk: int = 100) -> None:
    """Log params to the active run in batches (a single batch holds at most 100)."""
    import mlflow

    items = list(flatten(params).items())
    for k in range(0, len(items), chunk):
        mlflow.log_params(dict(items[k:k + chunk]))


def log_feature_model(
    model: Any,
    example_inputs: Sequence[Any],
    input_names: Sequence[str],
    *,
    registered_name: str | None = None,
    version_tags: Mapping[str, str] | None = None,
    name: str = "model",
) -> tuple[str, str | None]:
    """Log a feature extractor with a tensor signature; register it if asked.

    The model is saved in PyTorch's exported-program format ("pt2", no pickle) when
    ``torch.export`` can trace it, else pickled; either way the signature records the
    input names, dtypes and shapes (batch dimension free) and the ``(B, D)`` output.

    Parameters
    ----------
    model : torch.nn.Module
        Its ``forward(*inputs)`` returns (B, D) features.
    example_inputs : sequence of Tensor
        One small batch (B > 1), in ``forward`` order.
    input_names : sequence of str
        Names of the inputs in the signature.
    registered_name : str, optional
        Register a new version of this model name.
    version_tags : mapping, optional
        Tags set on the new model version.
    name : str
        Name of the logged model inside the run.

    Returns
    -------
    model_uri : str
    version : str or None
        The registered version, ``None`` when not registered.
    """
    import logging

    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.no_grad():
        output = model(*example_inputs)
    inputs = Schema([TensorSpec(np.dtype(str(t.numpy().dtype)), (-1, *t.shape[1:]), name=n)
                     for t, n in zip(example_inputs, input_names, strict=True)])
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, int(output.shape[1])), name="features")])
    signature = ModelSignature(inputs=inputs, outputs=outputs)
    requirements = [f"{k}=={v}" for k, v in package_versions().items()
                    if k in ("torch", "numpy", "cellrep")]
    common = dict(name=name, signature=signature, pip_requirements=requirements,
                  registered_model_name=registered_name)
    try:
        info = mlflow.pytorch.log_model(model, serialization_format="pt2",
                                        input_example=tuple(t.numpy() for t in example_inputs),
                                        **common)
    except Exception as err:  # noqa: BLE001 - any export failure falls back to pickling
        logging.getLogger(__name__).warning(
            "torch.export could not trace the model (%s: %s); logging it pickled instead",
            type(err).__name__, err)
        info = mlflow.pytorch.log_model(model, serialization_format="pickle", **common)
    version = None if info.registered_model_version is None else str(info.registered_model_version)
    if registered_name and version is not None and version_tags:
        client = mlflow.MlflowClient()
        for key, value in version_tags.items():
            client.set_model_version_tag(registered_name, version, key, str(value))
    return info.model_uri, version


def register_model(model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Register a logged model as a new version of ``name``; tag it; return the version."""
    import mlflow

    version = str(mlflow.register_model(model_uri, name).version)
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def set_champion(name: str, version: str | int) -> None:
    """Point the ``champion`` alias of registered model ``name`` at ``version``."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))
