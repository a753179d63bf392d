"""Screen I/O: data contracts, screen descriptions, image readers, ingestion, crop store."""

from cellrep_ml.io.atomic import atomic_path, write_parquet_atomic
from cellrep_ml.io.schema import (
    CELL_INDEX_SCHEMA,
    FIELD_INDEX_SCHEMA,
    FIELD_KEY,
    LIST_SEP,
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    SPLITS,
)
from cellrep_ml.io.screen_config import ChannelRoles, ScreenConfig

__all__ = [
    "CELL_INDEX_SCHEMA",
    "FIELD_INDEX_SCHEMA",
    "FIELD_KEY",
    "LIST_SEP",
    "MANIFEST_SCHEMA",
    "QUARANTINE_SCHEMA",
    "SPLITS",
    "ChannelRoles",
    "ScreenConfig",
    "atomic_path",
    "write_parquet_atomic",
]
