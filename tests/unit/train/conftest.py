"""Tiny crops partitions written with the real crop-store writer, and an MLflow sandbox."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cellrep_ml.io.crop_store import CropStoreWriter
from cellrep_ml.io.schema import CELL_INDEX_SCHEMA

CHANNELS = ["GFP", "DAPI", "nucleus_distance"]
ROLES = {"protein": "GFP", "nucleus": "DAPI", "markers": [], "segment_on": "DAPI"}


def write_partition(root: Path, *, dataset: str = "toy", cell_line: str = "a",
                    proteins: tuple[str, ...] = ("P1", "P2", "P3"), fields: int = 3,
                    cells_per_field: int = 4, size: int = 32, seed: int = 0,
                    offset: int = 0) -> Path:
    """One partition: per protein ``fields`` fields (the last is val), 4 cells each.

    Crop i carries ``(offset + i) / 256`` in pixel (0, 0) of channel 0, so tests can tell which
    crop they got.
    """
    rng = np.random.default_rng(seed)
    out = root / dataset / cell_line
    out.mkdir(parents=True)
    rows = []
    n = len(proteins) * fields * cells_per_field
    images = rng.random((n, len(CHANNELS), size, size), dtype=np.float32)
    images[:, 2] = images[:, 2] * 2 - 1
    images[:, 0, 0, 0] = (offset + np.arange(n)) / 256  # exact in float16
    i = 0
    for protein in proteins:
        for f in range(fields):
            for c in range(cells_per_field):
                rows.append({
                    "cell_id": f"{dataset}/{cell_line}/p1/{protein}/{f}/{c + 1}",
                    "crop_index": i, "dataset": dataset, "cell_line": cell_line,
                    "plate": "p1", "well": protein, "field": f, "protein": protein,
                    "centroid_z": 0.0, "centroid_y": 10.0, "centroid_x": 10.0, "area": 50,
                    "mask_fraction": 0.2, "split": "val" if f == fields - 1 else "train",
                })
                i += 1
    with CropStoreWriter(out / "crops.zarr", channel_names=CHANNELS, crop_shape=(size, size),
                         with_masks=False, attrs={"dataset": dataset, "roles": ROLES}) as w:
        w.append(images)
    pl.DataFrame(rows, schema=CELL_INDEX_SCHEMA).write_parquet(out / "cells.parquet")
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One compute thread: the test models are tiny, and on a shared 2-core machine two
    threads stall at every op's barrier while other processes hold the cores. Module
    scope: module-scoped results (the uninterrupted reference run) use it too, and
    bit-exact comparisons need the same thread count on both sides."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _two_lines(root: Path) -> list[Path]:
    return [write_partition(root, cell_line="a", seed=0),
            write_partition(root, cell_line="b", seed=1, offset=36)]


@pytest.fixture(scope="module")
def partitions(tmp_path_factory) -> list[Path]:
    """Two cell lines of dataset "toy" (36 crops each, 24 train / 12 val); read-only."""
    return _two_lines(tmp_path_factory.mktemp("crops"))


@pytest.fixture
def fresh_partitions(tmp_path) -> list[Path]:
    """Like ``partitions``, for a test that damages them."""
    return _two_lines(tmp_path / "crops")


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A throwaway SQLite tracking store."""
    uri = f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').as_posix()}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
