"""Top-level Dagster definitions: merges every domain; holds no logic of its own."""

from __future__ import annotations

import dagster as dg

from cellrep_assets.resources import default_resources
from cellrep_assets.screens import cell_crops, inbox_sensor, raw_screen, screen_job
from cellrep_assets.training import trained_models

defs = dg.Definitions(
    assets=[raw_screen, cell_crops, *trained_models],
    jobs=[screen_job],
    sensors=[inbox_sensor],
    resources=default_resources(),
)
