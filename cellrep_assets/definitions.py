"""Top-level Dagster definitions: merges every domain; holds no logic of its own."""

from __future__ import annotations

import dagster as dg

from cellrep_assets.cbvae_analysis import cbvae_analysis_assets
from cellrep_assets.enrichment import enrichment_assets
from cellrep_assets.evaluation import evaluation_assets
from cellrep_assets.features import (
    automation_sensor,
    cell_embeddings,
    champion_sensor,
    champions,
    nightly_reembedding,
    protein_features,
)
from cellrep_assets.resources import default_resources
from cellrep_assets.screens import cell_crops, inbox_sensor, raw_screen, screen_job
from cellrep_assets.training import trained_models
from cellrep_assets.versioning import catch_up_merges, merge_successful_runs

defs = dg.Definitions(
    assets=[raw_screen, cell_crops, *trained_models, *champions, *cell_embeddings,
            *protein_features, *evaluation_assets, *cbvae_analysis_assets,
            *enrichment_assets],
    jobs=[screen_job],
    schedules=[nightly_reembedding],
    sensors=[inbox_sensor, champion_sensor, automation_sensor, merge_successful_runs, catch_up_merges],
    resources=default_resources(),
)
