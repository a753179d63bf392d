"""Crops for training: partitions on disk, a cell table in memory, pixels streamed on demand.

A *partition* is one ``crops/<dataset>/<cell_line>/`` folder written by the crop step:
``crops.zarr`` (the crop store) and ``cells.parquet`` (the cell index, row i = crop i). A
model trains on every cell line of a dataset, so :class:`TrainingData` concatenates
several partitions into one global numbering, and :class:`CropDataset` reads crops by
global index, one partition's rows at a time.

Only the cell tables (a few columns per cell) are loaded in the parent process; pixels
are read lazily, and each process opens the Zarr stores itself on its first read — a
DataLoader worker never inherits an open handle, and no whole screen is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cellrep_ml.errors import InputError
from cellrep_ml.io.crop_store import CropStore
from cellrep_ml.io.schema import CELL_INDEX_SCHEMA, SPLITS

__all__ = ["CropDataset", "Partition", "TrainingData", "load_training_data"]

STORE_NAME = "crops.zarr"
INDEX_NAME = "cells.parquet"


@dataclass(frozen=True)
class Partition:
    """One crops partition folder and what its store says about itself (read without zarr)."""

    path: Path
    n_cells: int
    channel_names: tuple[str, ...]
    crop_shape: tuple[int, ...]  # (H, W) or (Z, H, W)
    roles: dict

    @property
    def store_path(self) -> Path:
        return self.path / STORE_NAME

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_NAME


def _read_store_header(store: Path) -> tuple[dict, tuple[int, ...]]:
    """Attributes and image shape of a Zarr v3 crop store, from its JSON metadata only.

    Reading the two small JSON files keeps the parent process free of zarr handles (the
    point of lazy opening) and is cheap on network file systems.
    """
    group_meta, array_meta = store / "zarr.json", store / "images" / "zarr.json"
    for p in (group_meta, array_meta):
        if not p.is_file():
            raise InputError("not a crop store (missing Zarr metadata)", path=p,
                             expected="a crops.zarr folder written by `cellrep crops`")
    attrs = json.loads(group_meta.read_text()).get("attributes", {})
    shape = tuple(int(s) for s in json.loads(array_meta.read_text())["shape"])
    if "channel_names" not in attrs:
        raise InputError("crop store has no channel_names attribute", path=group_meta)
    return attrs, shape


def open_partition(path: str | Path) -> tuple[Partition, pl.DataFrame]:
    """Validate one partition folder; return it and its cell index.

    Raises
    ------
    InputError
        If the folder, the store or the index is missing, the index does not follow
        ``CELL_INDEX_SCHEMA``, or index and store disagree on the number of cells.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise InputError("crops partition folder not found", path=path,
                         expected=f"a folder holding {STORE_NAME} and {INDEX_NAME}")
    index = path / INDEX_NAME
    if not index.is_file():
        raise InputError("cell index not found", path=index,
                         expected=f"{INDEX_NAME} beside {STORE_NAME}")
    attrs, shape = _read_store_header(path / STORE_NAME)
    cells = pl.read_parquet(index)
    missing = [c for c in CELL_INDEX_SCHEMA if c not in cells.columns]
    if missing:
        raise InputError("cell index is missing columns", path=index,
                         expected=str(list(CELL_INDEX_SCHEMA)), received=f"no {missing}")
    if cells.height != shape[0]:
        raise InputError("cell index and crop store disagree on the number of cells", path=index,
                         expected=f"{shape[0]} rows (crops in {STORE_NAME})",
                         received=f"{cells.height} rows")
    bad = sorted(set(cells["split"].unique().to_list()) - set(SPLITS))
    if bad:
        raise InputError("unknown split values in the cell index", path=index,
                         expected=str(SPLITS), received=str(bad))
    part = Partition(
        path=path,
        n_cells=int(shape[0]),
        channel_names=tuple(attrs["channel_names"]),
        crop_shape=tuple(shape[2:]),
        roles=dict(attrs.get("roles") or {}),
    )
    return part, cells


@dataclass
class TrainingData:
    """Several partitions of one dataset, numbered globally in the order given.

    Attributes
    ----------
    partitions : list of Partition
    cells : polars.DataFrame
        The concatenated cell indexes plus ``partition`` (position in ``partitions``) and
        ``row`` (global crop number, 0 … N−1).
    """

    partitions: list[Partition]
    cells: pl.DataFrame

    @property
    def channel_names(self) -> tuple[str, ...]:
        return self.partitions[0].channel_names

    @property
    def roles(self) -> dict:
        return self.partitions[0].roles

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return self.partitions[0].crop_shape

    @property
    def dataset(self) -> str:
        names = self.cells["dataset"].unique().to_list()
        return names[0] if len(names) == 1 else "mixed"

    def rows(self, split: str) -> np.ndarray:
        """Global crop numbers of one split, ascending, (n,) int64."""
        return self.cells.filter(pl.col("split") == split)["row"].to_numpy().astype(np.int64)

    def data_version(self) -> str:
        """SHA-256 (first 16 hex digits) over the bytes of every cell index, in order.

        Crops and cell index are written together, so a changed index means changed data;
        the digest is what model versions are tagged with.
        """
        h = hashlib.sha256()
        for p in self.partitions:
            h.update(p.index_path.read_bytes())
        return h.hexdigest()[:16]

    def dataset_view(self, channels: Sequence[str]) -> CropDataset:
        """A :class:`CropDataset` over these partitions reading ``channels`` by name."""
        return CropDataset([p.store_path for p in self.partitions],
                           [p.n_cells for p in self.partitions],
                           channel_indices=[self.channel_index(c) for c in channels])

    def channel_index(self, name: str) -> int:
        if name not in self.channel_names:
            raise InputError(f"channel {name!r} is not in the crop store",
                             path=self.partitions[0].store_path,
                             expected=f"one of {list(self.channel_names)}", received=repr(name))
        return self.channel_names.index(name)


def load_training_data(paths: Sequence[str | Path]) -> TrainingData:
    """Open and concatenate crops partitions of one dataset (its cell lines).

    Raises
    ------
    InputError
        If no path is given, a partition is invalid, or partitions disagree on channel
        names or crop shape (they could not share one model).
    """
    if not paths:
        raise InputError("no crops partition given", expected="at least one --crops PATH")
    parts, frames = [], []
    offset = 0
    for k, path in enumerate(paths):
        part, cells = open_partition(path)
        if parts and (part.channel_names, part.crop_shape) != (parts[0].channel_names,
                                                               parts[0].crop_shape):
            raise InputError(
                "partitions disagree on channels or crop shape", path=part.store_path,
                expected=f"{list(parts[0].channel_names)} {parts[0].crop_shape} "
                         f"(as {parts[0].store_path})",
                received=f"{list(part.channel_names)} {part.crop_shape}")
        cells = cells.select(list(CELL_INDEX_SCHEMA)).with_columns(
            pl.lit(k, pl.Int64).alias("partition"),
            pl.int_range(offset, offset + cells.height, dtype=pl.Int64).alias("row"),
        )
        parts.append(part)
        frames.append(cells)
        offset += part.n_cells
    cells = pl.concat(frames)
    if cells.height == 0:
        raise InputError("the crops partitions hold no cells", path=parts[0].path)
    return TrainingData(parts, cells)


class CropDataset:
    """Crops by global index across partitions; opens the stores lazily, per process.

    Parameters
    ----------
    store_paths : sequence of path
        ``crops.zarr`` folders, in global order.
    sizes : sequence of int
        Cells per store.
    channel_indices : sequence of int, optional
        Channels to return, in this order (default: all).

    Notes
    -----
    The object pickles to paths and sizes only, so a DataLoader worker (forked or
    spawned) starts with no open store and opens its own on its first read;
    :attr:`opened` is ``False`` in a process that never read a crop.

    Examples
    --------
    >>> ds = CropDataset(["a/crops.zarr", "b/crops.zarr"], [100, 50])  # doctest: +SKIP
    >>> ds[[0, 120]].shape   # crop 0 of a, crop 20 of b
    (2, C, H, W)
    """

    def __init__(self, store_paths: Sequence[str | Path], sizes: Sequence[int],
                 channel_indices: Sequence[int] | None = None) -> None:
        if len(store_paths) != len(sizes) or not store_paths:
            raise ValueError(f"need one size per store; got {len(store_paths)} paths, {len(sizes)} sizes")
        self.store_paths = [Path(p) for p in store_paths]
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.channel_indices = None if channel_indices is None else list(channel_indices)
        self._stores: list[CropStore | None] = [None] * len(self.store_paths)

    def __getstate__(self) -> dict:
        return {"store_paths": self.store_paths, "sizes": self.sizes,
                "channel_indices": self.channel_indices}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store_paths"], state["sizes"], state["channel_indices"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def opened(self) -> bool:
        """Whether this process has opened any store."""
        return any(s is not None for s in self._stores)

    def _store(self, k: int) -> CropStore:
        if self._stores[k] is None:
            self._stores[k] = CropStore(self.store_paths[k])
        return self._stores[k]

    def __getitem__(self, idx: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Crops ``idx`` (global numbers) in the order asked, float16.

        Returns
        -------
        (n, C, [Z,] H, W) ndarray, or (C, [Z,] H, W) for an int
        """
        scalar = np.ndim(idx) == 0
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"crop index out of range [0, {n}): min {idx.min()}, max {idx.max()}")
        part = np.searchsorted(self.offsets, idx, side="right") - 1  # (n,)
        out = None
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            crops = self._store(int(k))[idx[sel] - self.offsets[k]]  # (m, C_all, ...)
            if self.channel_indices is not None:
                crops = crops[:, self.channel_indices]
            if out is None:
                out = np.empty((idx.size, *crops.shape[1:]), dtype=crops.dtype)
            out[sel] = crops
        if out is None:  # empty request
            c = self._store(0).shape[1] if self.channel_indices is None else len(self.channel_indices)
            out = np.zeros((0, c, *self._store(0).shape[2:]), np.float16)
        return out[0] if scalar else out
