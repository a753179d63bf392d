"""The crop store: single-cell crops of one (dataset, cell line) as a Zarr v3 group.

Layout::

    crops.zarr/
      images   (N, C, H, W) or (N, C, Z, H, W)  float16, chunks of a few cells
      masks    (N, H, W)    or (N, Z, H, W)     uint8, the cell's own nucleus (optional)
      padded   (N,)                              bool, the crop reached outside its field
      attrs: channel_names, normalization, crop_size, output_size, dims, n_cells,
             schema_version

Row i of every array is crop i, and row i of ``cells.parquet`` (the cell index).

Why float16: crops are min–max normalised to [0, 1] (the distance channel to [−1, 1]),
where float16 keeps a relative precision of 2^-11 (≈ 5e-4), finer than the 8–12 useful
bits of a microscope's pixels, at half the size and read bandwidth of float32. Readers
get float16 back; cast to float32 before arithmetic.

Why chunks of a few cells and not sharding: with zarr-python 3.1, a shard of 1-cell inner
chunks cost about 0.3 ms per cell to write and 1.2 ms to read one cell (per-chunk codec
overhead dominates). Plain chunks of 64 cells read one random cell in 1.5-2 ms (zarr's
overhead again; 32-cell chunks were 0.05-0.3 ms faster), with N/64 files: on our file
system creating a file costs ~0.5 ms of kernel time, and object stores charge per object.

Why the writer encodes chunks itself: zarr-python 3.1 spends ≈ 1.2 ms of CPU per chunk
write in its async machinery (event loop hand-offs, selection bookkeeping), ten times the
≈ 0.07 ms that Blosc needs to compress a 32-cell chunk; for the crop pipeline that was a
third of its time. The writer lets zarr create the arrays (so their ``zarr.json`` is
zarr's own), then writes each whole chunk as the Zarr v3 spec defines it — the C-order
little-endian bytes, Blosc-compressed with the array's own codec configuration, at
``<array>/c.<i>.0.….0`` — and sets the final shape at :meth:`CropStoreWriter.close`.
Readers go through zarr as before; ``tests/unit/test_crop_store.py`` checks that the
chunk files are byte-identical to the ones zarr writes for the same data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numcodecs.blosc as numcodecs_blosc
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec
from zarr.codecs.bytes import Endian

__all__ = ["CROP_STORE_SCHEMA_VERSION", "CropStore", "CropStoreWriter", "to_float16"]

CROP_STORE_SCHEMA_VERSION = 1

#: Cells per chunk: small enough that a random read decodes little (0.5-4 MB), large enough
#: that files (and zarr's per-chunk overhead) stay few.
DEFAULT_CHUNK_CELLS = 64

# lz4 without byte shuffle. Noisy float16 crops hardly compress either way (measured on
# 32-cell chunks: simulated opencell crops 1.20× unshuffled vs 1.21× shuffled, the crop
# benchmark's 1.08× vs 1.13×), while the shuffle made encoding 1.3-3× and decoding
# 1.3-2.7× slower, for the crop writers and the DataLoader workers alike. zstd compresses
# a little better at ~10× the encoding time.
_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")


# Chunk files named "c.<i>.0.0.0" side by side in the array's folder: the default "/"
# separator makes a folder chain per chunk, and creating those cost more than writing the
# chunk on our file systems (≈ 0.2 ms per mkdir). Zarr readers follow the metadata.
_CHUNK_KEYS = {"name": "default", "separator": "."}


class CropStoreWriter:
    """Append crops in batches; full chunks are written as soon as they are complete.

    Parameters
    ----------
    path : str or Path
        Where the ``.zarr`` directory is created (overwritten if present). Write to a
        temporary path and move it into place (``cellrep_ml.io.atomic.atomic_path``).
    channel_names : sequence of str
        Names of the C channels, in order.
    crop_shape : tuple of int
        (H, W) or (Z, H, W) of one crop.
    with_masks : bool
        Also store the cell's own nucleus mask.
    attrs : mapping, optional
        More attributes (normalisation, crop_size, ...), JSON-serialisable.
    chunk_cells : int
        Cells per chunk.

    Examples
    --------
    >>> with CropStoreWriter(path, channel_names=["GFP"], crop_shape=(64, 64)) as w:  # doctest: +SKIP
    ...     w.append(images, masks)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channel_names: Sequence[str],
        crop_shape: tuple[int, ...],
        with_masks: bool = True,
        attrs: Mapping[str, object] | None = None,
        chunk_cells: int = DEFAULT_CHUNK_CELLS,
    ) -> None:
        if len(crop_shape) not in (2, 3):
            raise ValueError(f"crop_shape must be (H, W) or (Z, H, W), got {crop_shape}")
        self.path = Path(path)
        self.channel_names = list(channel_names)
        self.crop_shape = tuple(int(s) for s in crop_shape)
        self.chunk_cells = int(chunk_cells)
        self._group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        c = len(self.channel_names)
        self._images = self._group.create_array(
            "images", shape=(0, c, *self.crop_shape), dtype="float16",
            chunks=(self.chunk_cells, c, *self.crop_shape), compressors=_COMPRESSOR,
            fill_value=0.0, chunk_key_encoding=_CHUNK_KEYS,
        )
        self._masks = None
        if with_masks:
            self._masks = self._group.create_array(
                "masks", shape=(0, *self.crop_shape), dtype="uint8",
                chunks=(self.chunk_cells, *self.crop_shape), compressors=_COMPRESSOR,
                fill_value=0, chunk_key_encoding=_CHUNK_KEYS,
            )
        self._attrs = {
            "channel_names": self.channel_names,
            "dims": len(self.crop_shape),
            "schema_version": CROP_STORE_SCHEMA_VERSION,
            **dict(attrs or {}),
        }
        self._encoders = {name: _chunk_encoder(arr) for name, arr in self._arrays().items()}
        # Rows waiting for their chunk to fill, per array (less than one chunk).
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self._encoders}
        self._buf_padded: list[np.ndarray] = []
        self._buffered = 0
        self.n_written = 0

    def _arrays(self) -> dict[str, zarr.Array]:
        return {"images": self._images, **({"masks": self._masks} if self._masks is not None else {})}

    def __len__(self) -> int:
        return self.n_written + self._buffered

    def append(
        self, images: np.ndarray, masks: np.ndarray | None = None, padded: np.ndarray | None = None
    ) -> None:
        """Add a batch of crops; every chunk it completes is written at once.

        Parameters
        ----------
        images : (n, C, H, W) or (n, C, Z, H, W) ndarray
            Cast to float16 (round to nearest even, as numpy's cast).
        masks : (n, H, W) or (n, Z, H, W) ndarray, optional
            Required when the store has masks.
        padded : (n,) ndarray of bool, optional
            Default all False.
        """
        images = np.asarray(images)
        n = len(images)
        expected = (len(self.channel_names), *self.crop_shape)
        if images.shape[1:] != expected:
            raise ValueError(f"append: crops of shape {expected} expected, got {images.shape[1:]}")
        if self._masks is not None and (masks is None or np.shape(masks) != (n, *self.crop_shape)):
            raise ValueError(
                f"append: masks of shape {(n, *self.crop_shape)} expected, "
                f"got {None if masks is None else np.shape(masks)}"
            )
        flags = np.zeros(n, bool) if padded is None else np.asarray(padded, bool)
        if flags.shape != (n,):
            raise ValueError(f"append: padded of shape {(n,)} expected, got {flags.shape}")
        if n == 0:
            return
        self._buf_padded.append(flags)
        batches = {"images": to_float16(images)}
        if self._masks is not None:
            batches["masks"] = np.asarray(masks, np.uint8)
        held = self._buffered
        total = held + n
        whole = total // self.chunk_cells  # chunks completed by this batch
        first = self.n_written // self.chunk_cells
        with _blosc_in_this_thread():
            for name, batch in batches.items():
                pending = self._pending[name]
                start = 0
                for j in range(whole):
                    if j == 0 and held:
                        # Top up the pending rows to a whole chunk (one small copy).
                        start = self.chunk_cells - held
                        chunk = np.concatenate([*pending, batch[:start]])
                    else:
                        chunk = batch[start:start + self.chunk_cells]
                        start += self.chunk_cells
                    self._write_chunk(name, first + j, chunk)
                if whole:
                    pending.clear()
                if start < n:
                    # What is left waits for the next batch (a copy: less than a chunk).
                    pending.append(batch[start:].copy())
        self.n_written += whole * self.chunk_cells
        self._buffered = total - whole * self.chunk_cells

    def _flush_partial(self) -> None:
        """Write the pending rows as the last, partial chunk."""
        if not self._buffered:
            return
        i = self.n_written // self.chunk_cells
        with _blosc_in_this_thread():
            for name, pending in self._pending.items():
                self._write_chunk(name, i, np.concatenate(pending))
                pending.clear()
        self.n_written += self._buffered
        self._buffered = 0

    def _write_chunk(self, name: str, i: int, cells: np.ndarray) -> None:
        """Write chunk ``i`` of array ``name`` (``cells`` holds at most one chunk of rows).

        A last, partial chunk is padded with the fill value (0) to the full chunk shape,
        as Zarr stores every chunk, edge chunks included.
        """
        if len(cells) < self.chunk_cells:
            full = np.zeros((self.chunk_cells, *cells.shape[1:]), cells.dtype)
            full[: len(cells)] = cells
            cells = full
        # Chunk key "c.<i>.0....0": only the cell axis has more than one chunk.
        key = self.path / name / ".".join(["c", str(i), *["0"] * (cells.ndim - 1)])
        little = np.ascontiguousarray(cells, dtype=cells.dtype.newbyteorder("<"))
        key.write_bytes(self._encoders[name].encode(little))

    def close(self) -> Path:
        """Write what is buffered, the ``padded`` flags and the attributes; return the path."""
        self._flush_partial()
        # The arrays were created empty; their chunks are already on disk, so setting the
        # shape (metadata only) makes them visible.
        for arr in self._arrays().values():
            arr.resize((self.n_written, *arr.shape[1:]))
        padded = np.concatenate(self._buf_padded) if self._buf_padded else np.zeros(0, bool)
        # One small bool per cell: kept in memory and written once, not per batch.
        self._group.create_array("padded", data=padded, chunks=(max(1, min(len(padded), 1 << 20)),),
                                 overwrite=True)
        # One write of zarr.json (``attrs.update`` rewrites it once per key).
        self._group.update_attributes({**self._attrs, "n_cells": self.n_written})
        return self.path

    def __enter__(self) -> CropStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def to_float16(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float16)``, bit for bit, about 15× faster for float32 input.

    numpy converts float32 → float16 element by element in software; torch uses the CPU's
    conversion instructions (F16C / AVX-512), with the same round-to-nearest-even, on one
    thread (the copy is memory-bound; more threads only add CPU time). Other dtypes go
    through numpy.
    """
    if a.dtype == np.float16:
        return a
    if a.dtype != np.float32 or not a.flags.c_contiguous or not a.size:
        return a.astype(np.float16)
    import torch

    out = np.empty(a.shape, np.float16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.from_numpy(out).copy_(torch.from_numpy(a))
    finally:
        torch.set_num_threads(threads)
    return out


@contextmanager
def _blosc_in_this_thread():
    """Blosc without its thread pool: a 0.5 MB chunk compresses in ~0.1 ms, and handing it
    to two threads costs ~50 % more CPU time than doing it here."""
    previous = numcodecs_blosc.use_threads
    numcodecs_blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs_blosc.use_threads = previous


def _chunk_encoder(array: zarr.Array) -> Blosc:
    """The Blosc compressor that turns one chunk's raw bytes into its Zarr v3 chunk file.

    Built from the array's own codec metadata, and only for the pipeline this writer
    creates (little-endian bytes, then Blosc); anything else is refused rather than
    written in a format the metadata does not describe.
    """
    codecs = array.metadata.codecs
    supported = (
        len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
        # One-byte types carry no endianness (None).
        and codecs[0].endian in (None, Endian.little)
        and array.metadata.chunk_key_encoding.name == "default"
        and array.metadata.chunk_key_encoding.separator == _CHUNK_KEYS["separator"]
    )
    if not supported:
        raise ValueError(f"crop store writer: unsupported codec pipeline {codecs}")
    blosc = codecs[1]
    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle[blosc.shuffle.value],
                 blocksize=blosc.blocksize, typesize=blosc.typesize)


class CropStore:
    """Read-only access to a crop store; safe in many DataLoader worker processes.

    Nothing is opened until the first read, and a handle is never shared across
    processes: after a fork (or unpickling in a spawned worker) the store is reopened in
    the new process. No module-level state.

    Examples
    --------
    >>> store = CropStore.open("crops.zarr")  # doctest: +SKIP
    >>> x = store[[0, 5, 9]]                   # (3, C, H, W) float16
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pid: int | None = None
        self._group = None

    @classmethod
    def open(cls, path: str | Path) -> CropStore:
        """Open a store, checking that it exists and carries the expected attributes.

        Raises
        ------
        FileNotFoundError
            If ``path`` is not a crop store.
        """
        store = cls(path)
        if not (store.path / "zarr.json").is_file():
            raise FileNotFoundError(f"no crop store at {store.path} (expected a crops.zarr folder)")
        store._load()
        return store

    def _load(self):
        if self._group is None or self._pid != os.getpid():
            self._group = zarr.open_group(str(self.path), mode="r")
            self._pid = os.getpid()
        return self._group

    def __getstate__(self) -> dict:
        # Handles are per process: ship the path only.
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @property
    def attrs(self) -> dict:
        return dict(self._load().attrs)

    @property
    def channel_names(self) -> list[str]:
        return list(self.attrs["channel_names"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._load()["images"].shape)

    @property
    def has_masks(self) -> bool:
        return "masks" in self._load()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: int | Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Crops by position: an int gives (C, [Z,] H, W); an array of n ints (n, C, ...)."""
        return self._read("images", idx)

    def masks(self, idx: int | Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """The cell's own nucleus mask, indexed like ``__getitem__``."""
        if not self.has_masks:
            raise KeyError(f"crop store {self.path} has no masks")
        return self._read("masks", idx)

    def padded(self) -> np.ndarray:
        """(N,) bool: crops that reached outside their field."""
        return np.asarray(self._load()["padded"][:])

    def _read(self, name: str, idx) -> np.ndarray:
        arr = self._load()[name]
        if isinstance(idx, slice):
            return np.asarray(arr[idx])
        if np.isscalar(idx) or np.ndim(idx) == 0:
            i = int(idx)
            n = arr.shape[0]
            if not -n <= i < n:
                raise IndexError(f"crop {i} out of range for a store of {n}")
            return np.asarray(arr[i % n])
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            return np.zeros((0, *arr.shape[1:]), arr.dtype)
        # Zarr's orthogonal indexing wants sorted unique indices: read those, then
        # put them back in the caller's order (duplicates included).
        uniq, inverse = np.unique(idx % arr.shape[0], return_inverse=True)
        if idx.min() < -arr.shape[0] or idx.max() >= arr.shape[0]:
            raise IndexError(f"crop index out of range for a store of {arr.shape[0]}")
        return np.asarray(arr.oindex[uniq])[inverse]

    def __repr__(self) -> str:
        return f"CropStore({str(self.path)!r})"
