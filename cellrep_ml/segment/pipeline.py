"""One (dataset, cell line) partition: fields in, crop store + cell index + QC out."""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from cellrep_ml.errors import InputError
from cellrep_ml.io.atomic import atomic_path, check_own_folder
from cellrep_ml.io.crop_store import CropStoreWriter
from cellrep_ml.io.readers import read_field
from cellrep_ml.io.schema import CELL_INDEX_SCHEMA, conform
from cellrep_ml.io.screen_config import ScreenConfig
from cellrep_ml.segment._nuclei import REJECT_REASONS, _segment, segment_nuclei
from cellrep_ml.segment._splits import assign_splits
from cellrep_ml.segment.crops import (
    CROP_REJECT_REASONS,
    DISTANCE_CHANNEL,
    CellCrops,
    CropOptions,
    _crop_cells,
)

__all__ = ["CropResult", "crop_partition", "process_field"]

STORE_NAME = "crops.zarr"
CELLS_NAME = "cells.parquet"
QC_NAME = "qc.json"

# segment_nuclei's keyword defaults (screen.yaml may override any of them).
_SEGMENT_DEFAULTS = {
    name: p.default for name, p in inspect.signature(segment_nuclei).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}

#: Every reason a segmented cell can be rejected for, in pipeline order.
REJECT_REASONS_ALL = (*REJECT_REASONS, *CROP_REJECT_REASONS, "field_too_few_cells")


@dataclass(frozen=True)
class CropResult:
    """What :func:`crop_partition` did.

    Attributes
    ----------
    n_fields, n_fields_kept : int
        Fields read; fields with at least ``min_cells_per_field`` kept cells.
    n_cells : int
        Crops written (rows of the cell index).
    rejected : dict of str to int
        Segmented objects dropped, per reason (see ``REJECT_REASONS_ALL``).
    store_path, cells_path : Path
        The crop store and the cell index.
    seconds, cells_per_s : float
        Wall time of the whole call and kept cells per second of it.
    """

    n_fields: int
    n_fields_kept: int
    n_cells: int
    rejected: dict[str, int]
    store_path: Path
    cells_path: Path
    seconds: float
    cells_per_s: float


def process_field(row: Mapping, config: ScreenConfig, options: CropOptions) -> tuple[CellCrops, dict[str, int]]:
    """Read, segment and crop one field-index row.

    Returns the kept crops (channels: protein, nucleus, markers, then the distance channel
    if asked) and the counts of objects rejected by segmentation and crop QC.

    Raises
    ------
    InputError
        If the field's dimensionality disagrees with the screen's ``dims``; reader errors
        propagate unchanged (a bad field fails its partition, never silently drops data).
    """
    roles = config.channels
    channels = list(roles.all)
    image = read_field(row, channels)
    if image.ndim - 1 != config.dims:
        raise InputError(
            "field dimensionality disagrees with screen.yaml dims",
            path=_first_path(row), row=row.get("row"),
            expected=f"{config.dims}D fields", received=f"an array of shape {image.shape}",
        )
    seg = image[channels.index(roles.segmentation)]
    # The private forms of segment_nuclei / crop_cells hand the labelled pixels from one to
    # the other, so the crops do not list them again.
    kwargs = {**_SEGMENT_DEFAULTS, **dict(options.segmentation)}
    kwargs.pop("return_rejected", None)
    labels, rejected, foreground = _segment(seg, **kwargs)
    markers = [channels.index(m) for m in roles.markers]
    crops = _crop_cells(
        image, labels, foreground, crop_size=options.crop_size, output_size=options.output_size,
        marker_channels=markers, clip_markers_below=options.clip_markers_below,
        nucleus_distance=options.nucleus_distance, mask_fraction=options.mask_fraction,
    )
    return crops, {**rejected, **crops.rejected}


def crop_partition(
    field_index: pl.DataFrame,
    config: ScreenConfig,
    out_dir: Path,
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    workers: int = 1,
    progress: bool = False,
) -> CropResult:
    """Segment and crop every field of a partition into ``out_dir``.

    Streams fields one at a time (or ``workers`` at a time) — a screen is never loaded
    whole — and writes, each atomically:

    - ``crops.zarr``: the crop store (:mod:`cellrep_ml.io.crop_store`), channels protein,
      nucleus, markers (roles order) and ``"nucleus_distance"`` when configured;
    - ``cells.parquet``: the cell index (``CELL_INDEX_SCHEMA``), row i = crop i;
    - ``qc.json``: rejected cells per reason, field counts, the options used.

    Parameters
    ----------
    field_index : polars.DataFrame
        Rows of ``FIELD_INDEX_SCHEMA`` (one partition's validated fields).
    config : ScreenConfig
        Channel roles, crop geometry, ``min_cells_per_field``; crop options from its
        ``crops:`` mapping (:meth:`CropOptions.from_config`).
    out_dir : Path
        Output folder, created if needed.
    seed : int
        Seed of the split assignment.
    split_fractions : (float, float, float)
        Train/val/test fractions of each protein's kept fields (:func:`assign_splits`).
    workers : int
        Processes that read, segment and crop fields; this process writes.
    progress : bool
        Show a progress bar with throughput.

    Returns
    -------
    CropResult

    Raises
    ------
    InputError
        From the readers (missing file, channel, ...), naming the manifest row.
    ValueError
        If ``field_index`` lacks columns or the options are invalid.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    options = CropOptions.from_config(config)
    missing = {"field_id", "protein", "abs_paths", "format", "channels"} - set(field_index.columns)
    if missing:
        raise ValueError(f"crop_partition: field index lacks columns {sorted(missing)}")
    # Fail on bad fractions now, not after every field has been segmented.
    assign_splits(pl.DataFrame(schema={"protein": pl.Utf8, "field_id": pl.Utf8}),
                  fractions=split_fractions)
    rows = field_index.to_dicts()
    channel_names = [*config.channels.all, *([DISTANCE_CHANNEL] if options.nucleus_distance else [])]

    rejected: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS_ALL, 0))
    index_parts: list[pl.DataFrame] = []
    n_padded = 0
    n_fields_kept = 0
    n_cells = 0
    store_path = out_dir / STORE_NAME
    cells_path = out_dir / CELLS_NAME
    bar = tqdm(total=len(rows), unit="field", disable=not progress, desc=f"crops {config.dataset}")
    # The store, the cell index and qc.json change together: written into a temporary
    # folder that replaces the partition folder in one step.
    check_own_folder(out_dir, {STORE_NAME, CELLS_NAME, QC_NAME}, "crop")
    with atomic_path(out_dir) as tmp_dir:
        tmp_dir.mkdir()
        tmp_store = tmp_dir / STORE_NAME
        writer: CropStoreWriter | None = None
        results = _results(rows, config, options, workers)
        for i, (row, (crops, field_rejected)) in enumerate(zip(rows, results, strict=True)):
            if i % _TRIM_EVERY == _TRIM_EVERY - 1:
                _trim_heap()
            rejected.update(field_rejected)
            if len(crops) < config.min_cells_per_field:
                rejected["field_too_few_cells"] += len(crops)
                bar.update(1)
                continue
            if writer is None:
                writer = _writer(tmp_store, channel_names, crops.images.shape[2:], config, options)
            writer.append(crops.images, crops.masks, crops.padded)
            index_parts.append(_index_part(row, crops, n_cells))
            n_padded += int(crops.padded.sum())
            n_cells += len(crops)
            n_fields_kept += 1
            bar.update(1)
            bar.set_postfix(cells=n_cells, cells_per_s=f"{n_cells / (time.perf_counter() - t0):.0f}")
        bar.close()
        if writer is None:
            writer = _writer(tmp_store, channel_names, _empty_crop_shape(config, options), config, options)
        writer.close()
        _cell_index(index_parts, seed, split_fractions).write_parquet(tmp_dir / CELLS_NAME)
        seconds = time.perf_counter() - t0
        qc = {
            "dataset": config.dataset,
            "n_fields": len(rows),
            "n_fields_kept": n_fields_kept,
            "n_cells": n_cells,
            "rejected": dict(rejected),
            "padded_cells": n_padded,
            "min_cells_per_field": config.min_cells_per_field,
            "mask_fraction": list(options.mask_fraction),
            "segmentation": dict(options.segmentation),
            "seed": seed,
            "split_fractions": list(split_fractions),
            "seconds": round(seconds, 3),
        }
        (tmp_dir / QC_NAME).write_text(json.dumps(qc, indent=2))
    return CropResult(
        n_fields=len(rows), n_fields_kept=n_fields_kept, n_cells=n_cells,
        rejected=dict(rejected), store_path=store_path, cells_path=cells_path,
        seconds=seconds, cells_per_s=n_cells / seconds if seconds > 0 else 0.0,
    )


def _results(
    rows: list[dict], config: ScreenConfig, options: CropOptions, workers: int
) -> Iterator[tuple[CellCrops, dict[str, int]]]:
    """Per-field results in row order, computed here or in a bounded process pool."""
    if workers <= 1:
        for row in rows:
            yield process_field(row, config, options)
        return
    # forkserver: forking a process that already runs polars/zarr threads can deadlock.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # At most 2 fields per worker in flight keeps memory flat on big screens.
        pending = []
        it = iter(rows)
        for row in it:
            pending.append(pool.submit(_process_field_in_worker, row, config, options))
            if len(pending) >= 2 * workers:
                break
        for row in it:
            yield pending.pop(0).result()
            pending.append(pool.submit(_process_field_in_worker, row, config, options))
        for fut in pending:
            yield fut.result()


# glibc raises its mmap threshold after the first field-sized arrays are freed, so the
# later ones (1-8 MiB temporaries) come from its heap, which fragments: without a trim a
# crop process's peak memory kept growing with the screen (476 / 568 MiB at 48 / 192
# fields of the crop benchmark); with one every 16 fields it stays flat (449 / 463). A
# trim costs ~2 ms, and the pages it hands back fault in again: trimming after every
# field would add ~20 ms of kernel time per field, every 16th adds ~0.5 ms.
_TRIM_EVERY = 16
_fields_in_this_worker = 0


def _process_field_in_worker(row: Mapping, config: ScreenConfig, options: CropOptions
                             ) -> tuple[CellCrops, dict[str, int]]:
    """:func:`process_field` in a pool worker, trimming the worker's heap every few fields."""
    global _fields_in_this_worker
    _fields_in_this_worker += 1
    if _fields_in_this_worker % _TRIM_EVERY == 0:
        _trim_heap()
    return process_field(row, config, options)


def _trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere a no-op)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _writer(path: Path, channel_names: list[str], crop_shape: tuple[int, ...],
            config: ScreenConfig, options: CropOptions) -> CropStoreWriter:
    return CropStoreWriter(
        path, channel_names=channel_names, crop_shape=tuple(crop_shape), with_masks=True,
        attrs={
            "dataset": config.dataset,
            "crop_size": options.crop_size,
            "output_size": options.output_size or options.crop_size,
            "roles": {"protein": config.channels.protein, "nucleus": config.channels.nucleus,
                      "markers": list(config.channels.markers),
                      "segment_on": config.channels.segmentation},
            "normalization": {
                "method": "min-max per crop per channel over in-field pixels",
                "range": [0.0, 1.0],
                "clip_markers_below": options.clip_markers_below,
                "distance_channel": DISTANCE_CHANNEL if options.nucleus_distance else None,
                "distance_range": [-1.0, 1.0],
                "padding": "0 outside the field (see the padded array)",
            },
        },
    )


def _empty_crop_shape(config: ScreenConfig, options: CropOptions) -> tuple[int, ...]:
    size = options.output_size or options.crop_size
    # Z is unknown without a kept field; 1 plane marks an empty 3D store.
    return (1, size, size) if config.dims == 3 else (size, size)


# Columns of the index as it is built, before the split is known.
_PART_SCHEMA = {**{k: v for k, v in CELL_INDEX_SCHEMA.items() if k != "split"}, "field_id": pl.Utf8}


def _index_part(row: Mapping, crops: CellCrops, start: int) -> pl.DataFrame:
    """One field's rows of the cell index, as a columnar frame (~100 bytes per cell, so a
    screen of millions of cells keeps its index in memory without Python objects)."""
    n = len(crops)
    field_id = str(row["field_id"])
    constants = {k: row.get(k) for k in ("dataset", "cell_line", "plate", "well", "field", "protein")}
    return pl.DataFrame({
        "label": crops.labels.astype(np.int64),
        "crop_index": np.arange(start, start + n, dtype=np.int64),
        "centroid_z": crops.centroids[:, 0],
        "centroid_y": crops.centroids[:, 1],
        "centroid_x": crops.centroids[:, 2],
        "area": crops.areas.astype(np.int64),
        "mask_fraction": crops.mask_fraction.astype(np.float64),
    }).with_columns(
        pl.concat_str([pl.lit(f"{field_id}/"), pl.col("label").cast(pl.Utf8)]).alias("cell_id"),
        *(pl.lit(v).alias(k) for k, v in constants.items()), pl.lit(field_id).alias("field_id"),
    ).select([pl.col(k).cast(t) for k, t in _PART_SCHEMA.items()])


def _cell_index(parts: list[pl.DataFrame], seed: int, fractions: Sequence[float]) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=CELL_INDEX_SCHEMA)
    cells = pl.concat(parts)
    splits = assign_splits(cells.select("protein", "field_id").unique(), seed=seed, fractions=fractions)
    cells = cells.join(splits, on="field_id", how="left", maintain_order="left")
    return conform(cells, CELL_INDEX_SCHEMA, name="cell index")


def _first_path(row: Mapping) -> str | None:
    paths = row.get("abs_paths") or []
    return str(paths[0]) if len(paths) else None
