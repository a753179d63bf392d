"""Screens domain: raw_screen → cell_crops, their checks and the inbox sensor."""

from cellrep_assets.screens.assets import cell_crops, raw_screen, screen_job
from cellrep_assets.screens.sensors import inbox_sensor

__all__ = ["cell_crops", "inbox_sensor", "raw_screen", "screen_job"]
