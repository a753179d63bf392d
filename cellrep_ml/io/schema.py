"""Data contracts of cellrep, written down as code: one schema per table.

Tables are polars DataFrames. Every writer validates against these schemas and every
reader may rely on them. See ARCHITECTURE.md for where each table lives.
"""

from __future__ import annotations

import polars as pl

#: Separator inside the manifest's ``channels`` and multi-file ``path`` cells.
LIST_SEP = "|"

#: Manifest — one row per field of view, as a user or the simulator writes it (CSV or Parquet).
#: ``channels`` lists channel names in file order, ``|``-separated (``"GFP|Hoechst"``).
#: ``path`` is one multi-channel file (OME-TIFF, TIFF stack, OME-Zarr), or ``|``-separated
#: paths, one single-channel file per channel in ``channels`` order (HPA style). Relative
#: paths are relative to the manifest's folder (the screen root) and may not escape it.
#: Ground truth never lives here.
MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.Utf8,
    "cell_line": pl.Utf8,
    "plate": pl.Utf8,
    "well": pl.Utf8,
    "field": pl.Int64,
    "protein": pl.Utf8,
    "path": pl.Utf8,
    "channels": pl.Utf8,
}

#: Natural key of a field of view; duplicates of it are an error.
FIELD_KEY = ("dataset", "cell_line", "plate", "well", "field")

#: Field index — the validated manifest of one (dataset, cell_line) partition (``raw_screen``).
FIELD_INDEX_SCHEMA: dict[str, pl.DataType] = {
    "field_id": pl.Utf8,  # "<dataset>/<cell_line>/<plate>/<well>/<field>"
    "row": pl.Int64,  # 1-based manifest data row
    **MANIFEST_SCHEMA,
    "abs_paths": pl.List(pl.Utf8),  # resolved, one per file
    "format": pl.Utf8,  # ome-tiff | tiff | png | jpeg | ome-zarr
    "size_z": pl.Int64,  # 1 for 2D fields
    "size_y": pl.Int64,
    "size_x": pl.Int64,
    "dtype": pl.Utf8,
    "signature": pl.Utf8,  # hash of (path, size, mtime) of every file: re-ingest detection
}

#: Quarantine — fields that failed validation, with the reason; the rest still ingests.
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64,
    "field_id": pl.Utf8,
    "path": pl.Utf8,
    "error": pl.Utf8,  # exception type name
    "reason": pl.Utf8,  # the full, user-facing message
}

#: Cell index — one row per single-cell crop (``cell_crops``), aligned with the crop store:
#: row i of the index is crop i of the Zarr arrays.
CELL_INDEX_SCHEMA: dict[str, pl.DataType] = {
    "cell_id": pl.Utf8,  # "<field_id>/<nucleus label>"
    "crop_index": pl.Int64,
    "dataset": pl.Utf8,
    "cell_line": pl.Utf8,
    "plate": pl.Utf8,
    "well": pl.Utf8,
    "field": pl.Int64,
    "protein": pl.Utf8,
    "centroid_z": pl.Float64,  # 0.0 for 2D
    "centroid_y": pl.Float64,
    "centroid_x": pl.Float64,
    "area": pl.Int64,  # nucleus area (pixels; voxels in 3D)
    "mask_fraction": pl.Float64,  # fraction of the crop covered by the cell's nucleus mask
    "split": pl.Utf8,  # train | val | test, by field of view within each protein
}

SPLITS = ("train", "val", "test")


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with the given schema."""
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], *, name: str) -> pl.DataFrame:
    """Select and cast ``df`` to ``schema`` (column order included).

    Raises
    ------
    ValueError
        If a column is missing; the message names the table and the missing columns.
    """
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing}; has {df.columns}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
