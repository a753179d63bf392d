"""Blocking asset checks of the screens domain.

Each check re-reads what the asset wrote (not the asset's in-memory results), so a check
that passes vouches for the files downstream assets will read.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import numpy as np
import polars as pl

from cellrep_ml.io.crop_store import CropStore

RAW_SCREEN_CHECKS = [
    dg.AssetCheckSpec("fields_ingested", asset="raw_screen", blocking=True,
                      description="The field index is non-empty and has unique field ids."),
    dg.AssetCheckSpec("quarantine_rate", asset="raw_screen", blocking=True,
                      description="Quarantined fields stay below the configured fraction."),
]

CELL_CROPS_CHECKS = [
    dg.AssetCheckSpec("crops_non_empty", asset="cell_crops", blocking=True,
                      description="At least one cell; the index and the store agree in length."),
    dg.AssetCheckSpec("crops_finite", asset="cell_crops", blocking=True,
                      description="Crop values are finite and within the normalised range."),
    dg.AssetCheckSpec("qc_rate", asset="cell_crops", blocking=True,
                      description="QC rejects stay below the configured fraction of segmented cells."),
]

# Enough crops to catch a systematically broken store without reading a big one whole.
_FINITE_SAMPLE = 2048


def check_raw_screen(fields: pl.DataFrame, quarantine: pl.DataFrame,
                     max_quarantine_fraction: float) -> Iterator[dg.AssetCheckResult]:
    n_unique = fields["field_id"].n_unique()
    yield dg.AssetCheckResult(
        check_name="fields_ingested", passed=len(fields) > 0 and n_unique == len(fields),
        metadata={"fields": len(fields), "unique_field_ids": n_unique},
    )
    total = len(fields) + len(quarantine)
    fraction = len(quarantine) / total if total else 1.0
    yield dg.AssetCheckResult(
        check_name="quarantine_rate", passed=fraction <= max_quarantine_fraction,
        metadata={"quarantined_fraction": round(fraction, 4), "bound": max_quarantine_fraction},
    )


def check_cell_crops(cells: pl.DataFrame, store: CropStore, result,
                     max_rejected_fraction: float) -> Iterator[dg.AssetCheckResult]:
    yield dg.AssetCheckResult(
        check_name="crops_non_empty", passed=len(cells) > 0 and len(store) == len(cells),
        metadata={"index_rows": len(cells), "store_crops": len(store)},
    )
    n = len(store)
    idx = np.unique(np.linspace(0, n - 1, min(n, _FINITE_SAMPLE)).astype(np.int64)) if n else []
    sample = store[idx].astype(np.float32) if n else np.zeros((0,), np.float32)
    finite = bool(np.isfinite(sample).all())
    # Normalised channels lie in [0, 1]; the signed-distance channel in [-1, 1].
    in_range = bool(sample.size == 0 or (sample.min() >= -1.0001 and sample.max() <= 1.0001))
    yield dg.AssetCheckResult(
        check_name="crops_finite", passed=n > 0 and finite and in_range,
        metadata={"sampled": int(len(idx)), "finite": finite, "in_range": in_range,
                  "min": float(sample.min()) if sample.size else 0.0,
                  "max": float(sample.max()) if sample.size else 0.0},
    )
    rejected = sum(result.rejected.values())
    segmented = rejected + result.n_cells
    fraction = rejected / segmented if segmented else 1.0
    yield dg.AssetCheckResult(
        check_name="qc_rate", passed=fraction <= max_rejected_fraction,
        metadata={"rejected_fraction": round(fraction, 4), "bound": max_rejected_fraction,
                  "segmented": segmented},
    )
