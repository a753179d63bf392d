"""Models domain: trained_model/<method> assets, the Pipes launcher, the GPU pod template."""

from cellrep_assets.training.assets import METHODS, build_trained_model_asset, trained_models
from cellrep_assets.training.launcher import TrainingLauncher
from cellrep_assets.training.pod import GpuPodSettings, training_pod_spec

__all__ = [
    "METHODS",
    "GpuPodSettings",
    "TrainingLauncher",
    "build_trained_model_asset",
    "trained_models",
    "training_pod_spec",
]
