"""Features domain: champion selection, cell embeddings, protein features and their triggers."""

from cellrep_assets.features.assets import cell_embeddings, protein_features
from cellrep_assets.features.automation import (
    automation_sensor,
    champion_sensor,
    nightly_reembedding,
)
from cellrep_assets.features.methods import BASELINES, FEATURE_METHODS, TRAINED_METHODS
from cellrep_assets.features.selection import champions

__all__ = [
    "BASELINES",
    "FEATURE_METHODS",
    "TRAINED_METHODS",
    "automation_sensor",
    "cell_embeddings",
    "champion_sensor",
    "champions",
    "nightly_reembedding",
    "protein_features",
]
