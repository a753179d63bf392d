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

# Ingestion of real screens: manifest, image readers, field validation, screen registry.
from cellrep_ml.io.ingest import IngestResult, ingest_partition, ingest_screen  # noqa: E402
from cellrep_ml.io.manifest import read_manifest, resolve_paths, row_problems  # noqa: E402
from cellrep_ml.io.readers import (  # noqa: E402
    FieldInfo,
    FieldReader,
    open_field,
    probe_field,
    read_field,
)
from cellrep_ml.io.registry import (  # noqa: E402
    ScreenRecord,
    get_screen,
    list_screens,
    register_screen,
)

__all__ += [
    "FieldInfo",
    "FieldReader",
    "IngestResult",
    "ScreenRecord",
    "get_screen",
    "ingest_partition",
    "ingest_screen",
    "list_screens",
    "open_field",
    "probe_field",
    "read_field",
    "read_manifest",
    "register_screen",
    "resolve_paths",
    "row_problems",
]
