"""Crops streamed by global index, channels by name, stores opened only where read."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
import torch

import cellrep_ml.train.data as data_mod
from cellrep_ml.errors import InputError
from cellrep_ml.io.crop_store import CropStore
from cellrep_ml.train.data import CropDataset, load_training_data


def _marker(crops: np.ndarray) -> np.ndarray:
    """The crop number written into pixel (0, 0) of the protein channel."""
    return np.rint(crops[:, 0, 0, 0].astype(np.float64) * 256).astype(int)


def test_concatenates_partitions_in_order(partitions):
    data = load_training_data(partitions)
    assert data.cells.height == 72
    assert data.cells["row"].to_list() == list(range(72))
    assert data.cells["cell_line"][35] == "a" and data.cells["cell_line"][36] == "b"
    assert data.rows("val").size == 24 and data.rows("train").size == 48
    assert data.channel_names == ("GFP", "DAPI", "nucleus_distance")
    assert len(data.data_version()) == 16


def test_dataset_returns_requested_crops_in_order(partitions):
    data = load_training_data(partitions)
    ds = data.dataset_view(["GFP", "DAPI"])
    idx = np.array([40, 3, 71, 3, 0])  # both partitions, a repeat, unsorted
    crops = ds[idx]
    assert crops.shape == (5, 2, 32, 32) and crops.dtype == np.float16
    assert _marker(crops).tolist() == idx.tolist()
    # Channels by name: DAPI of crop 40 is channel 1 of the store, partition b row 4.
    direct = CropStore(partitions[1] / "crops.zarr")[4]
    np.testing.assert_array_equal(crops[0, 1], direct[1])
    assert ds[7].shape == (2, 32, 32)
    with pytest.raises(IndexError):
        ds[[72]]


def test_unknown_channel_names_the_store(partitions):
    data = load_training_data(partitions)
    with pytest.raises(InputError, match="channel 'Tubulin' is not in the crop store"):
        data.dataset_view(["Tubulin"])


def test_workers_open_the_store_and_the_parent_does_not(partitions, tmp_path, monkeypatch):
    log = tmp_path / "opened.txt"

    class RecordingStore(CropStore):
        def _load(self):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            return super()._load()

    monkeypatch.setattr(data_mod, "CropStore", RecordingStore)
    data = load_training_data(partitions)
    ds = data.dataset_view(["GFP"])
    batches = [np.arange(k, k + 9) for k in range(0, 72, 9)]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=batches, num_workers=2)
    seen = np.concatenate([_marker(np.asarray(b)) for b in loader])
    assert seen.tolist() == list(range(72))
    pids = {int(p) for p in log.read_text().split()}
    assert os.getpid() not in pids
    assert len(pids) == 2  # each worker opened its own handles
    assert not ds.opened


def test_pickled_dataset_carries_no_handle(partitions):
    import pickle

    ds = load_training_data(partitions).dataset_view(["GFP"])
    ds[[0]]
    assert ds.opened
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone.opened
    assert _marker(clone[[5]]).tolist() == [5]


def test_bad_partitions_are_reported(fresh_partitions, tmp_path):
    partitions = fresh_partitions
    with pytest.raises(InputError, match="crops partition folder not found"):
        load_training_data([tmp_path / "nowhere"])
    (partitions[0] / "cells.parquet").rename(tmp_path / "moved.parquet")
    with pytest.raises(InputError, match="cell index not found"):
        load_training_data(partitions)
    pl.read_parquet(tmp_path / "moved.parquet").head(10).write_parquet(partitions[0] / "cells.parquet")
    with pytest.raises(InputError, match="disagree on the number of cells"):
        load_training_data(partitions)


def test_crop_dataset_rejects_mismatched_sizes(partitions):
    with pytest.raises(ValueError, match="one size per store"):
        CropDataset([partitions[0] / "crops.zarr"], [36, 36])
