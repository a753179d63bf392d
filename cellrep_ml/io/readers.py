"""Image readers: one field of view in, a ``(C, Y, X)`` or ``(C, Z, Y, X)`` array out.

Channels are addressed by name. Where the names come from depends on the format:

============  ==========================================  =================================
format        file(s)                                     channel names
============  ==========================================  =================================
ome-tiff      one OME-TIFF (CYX, CZYX, ZCYX, YX, ...)     OME-XML ``Channel/@Name``
tiff          one plain TIFF stack                        manifest ``channels``, file order
tiff/png/     one file per channel (HPA style), paths     manifest ``channels``, one per
jpeg          ``|``-separated                             file
ome-zarr      an NGFF image group (zarr v2 or v3)         ``omero.channels[].label``
============  ==========================================  =================================

Axes. OME-TIFF and OME-Zarr carry their axes; a time axis must have length 1. A plain
TIFF carries none (unless written by ImageJ, whose ``C``/``Z`` axes are used): its
leading non-spatial axes are read as ``C`` then ``Z``, so a 3-D plain stack is
``(C, Y, X)`` and a 4-D one ``(C, Z, Y, X)``; interleaved RGB samples (``YXS``) are
channels. A one-channel file (one name in ``channels``, or one of the per-channel
files) holds ``(Y, X)`` or ``(Z, Y, X)``.

RGB PNG/JPEG files used as one channel (HPA ships a coloured image per stain) become one
plane: when two of R, G, B are all zero the third is taken as is; otherwise the ITU-R
601 luminance ``0.299 R + 0.587 G + 0.114 B`` is rounded back to the file's dtype. A
single RGB file whose ``channels`` lists three (or four, with alpha) names is read band
by band instead.

Pixel types: ``uint8``, ``uint16`` and ``float32`` (either byte order); anything else is
rejected. 2-D fields (``size_z == 1``) come back as ``(C, Y, X)``, 3-D fields as
``(C, Z, Y, X)``, always in the order of the requested names.

Every call opens its own file handles, so the readers are safe to use from threads and
processes. Uncompressed TIFFs are memory-mapped and only the requested channels are
copied; compressed TIFFs decode only the pages of the requested channels where the
pages are planes; OME-Zarr reads only the chunks of the requested channels.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cellrep_ml.errors import (
    BlankImageError,
    ChannelError,
    ImageReadError,
    ImageShapeError,
    UnsupportedDtypeError,
)
from cellrep_ml.io.manifest import split_list

__all__ = [
    "FORMATS",
    "SUPPORTED_DTYPES",
    "FieldInfo",
    "FieldReader",
    "detect_format",
    "open_field",
    "probe_field",
    "read_field",
]

FORMATS = ("ome-tiff", "tiff", "png", "jpeg", "ome-zarr")
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")

_TIFF_EXT = (".tif", ".tiff")
_PNG_EXT = (".png",)
_JPEG_EXT = (".jpg", ".jpeg")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's "L" conversion


@dataclass(frozen=True)
class FieldInfo:
    """What a field's files hold, read from headers only.

    Attributes
    ----------
    format : str
        One of :data:`FORMATS`.
    size_z, size_y, size_x : int
        Field size in pixels; ``size_z`` is 1 for 2-D fields.
    dtype : str
        Pixel type, native byte order (``"uint16"``).
    channels : tuple of str
        Channel names in file order.
    """

    format: str
    size_z: int
    size_y: int
    size_x: int
    dtype: str
    channels: tuple[str, ...]

    @property
    def ndim(self) -> int:
        """2 for a 2-D field, 3 for a z-stack."""
        return 3 if self.size_z > 1 else 2


def detect_format(paths: Sequence[str | Path]) -> str:
    """The format family of a field's files, from their names.

    A single ``.tif`` is reported as ``"tiff"``; whether it is an OME-TIFF is only known
    once its header is read (:func:`probe_field` reports the refined format).

    Raises
    ------
    ImageReadError
        A file type cellrep does not read, or per-channel files of different types.
    """
    kinds = {_kind(Path(p)) for p in paths}
    if len(paths) > 1 and kinds <= {"ome-tiff", "tiff"}:
        kinds = {"tiff"}  # per-channel TIFFs, OME or not, are read alike
    if len(kinds) != 1:
        raise ImageReadError("per-channel files of different types", path=str(paths[0]),
                             expected="one file type per field", received=str(sorted(kinds)))
    kind = kinds.pop()
    if kind == "ome-zarr" and len(paths) > 1:
        raise ImageReadError("an OME-Zarr field is one image group", path=str(paths[0]),
                             expected="one .zarr path", received=f"{len(paths)} paths")
    return kind


class FieldReader:
    """An opened field: its :class:`FieldInfo` and a method reading named channels.

    Made by :func:`open_field`; not shared between threads.
    """

    def __init__(self, source: _Source, row: int | None) -> None:
        self._source = source
        self._row = row
        self.info: FieldInfo = source.info

    def read(self, channels: Sequence[str], *, check_blank: bool = True) -> np.ndarray:
        """Read the named channels.

        Parameters
        ----------
        channels : sequence of str
            Names, in the order wanted.
        check_blank : bool
            Raise :class:`BlankImageError` when every channel read is constant.

        Returns
        -------
        image : (C, Y, X) or (C, Z, Y, X) ndarray
            ``C = len(channels)``; 3-D when ``info.size_z > 1``.

        Raises
        ------
        ChannelError
            A name is not among the field's channels (the message lists them).
        ImageReadError
            The pixels cannot be decoded (truncated or corrupt file).
        BlankImageError
            Every requested channel is constant.
        """
        info = self.info
        missing = [c for c in channels if c not in info.channels]
        if missing or not channels:
            raise ChannelError(
                f"channel(s) {missing} not in the field" if missing else "no channel requested",
                path=self._source.where, row=self._row,
                expected=f"channels among {list(info.channels)}",
                received=f"a request for {list(channels)}",
            )
        idx = [info.channels.index(c) for c in channels]
        try:
            data = self._source.read(idx)  # (C, Z, Y, X)
        except (ImageReadError, ChannelError):
            raise
        except Exception as exc:  # codecs raise their own types on corrupt data
            raise ImageReadError(
                f"cannot decode pixels ({type(exc).__name__}: {exc})",
                path=self._source.where, row=self._row,
                expected=f"a readable {info.format} file", received="corrupt or truncated data",
            ) from exc
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        if check_blank and _is_blank(data):
            raise BlankImageError(
                "blank image: every requested channel is constant",
                path=self._source.where, row=self._row,
                expected=f"signal in at least one of {list(channels)}",
                received=f"constant value {data.flat[0].item()!r}",
            )
        return data[:, 0] if info.size_z == 1 else data

    def close(self) -> None:
        """Release file handles."""
        self._source.close()


@contextlib.contextmanager
def open_field(row: Mapping) -> Iterator[FieldReader]:
    """Open a field of the field index; read headers only.

    Parameters
    ----------
    row : mapping
        One field-index row: ``abs_paths`` (list of absolute paths), ``channels``
        (``|``-separated names, used where the files do not name their channels),
        optionally ``format`` and ``row`` (the manifest row, named in errors).

    Yields
    ------
    reader : FieldReader

    Raises
    ------
    ImageReadError, ImageShapeError, UnsupportedDtypeError, ChannelError
        Missing, unreadable or truncated file; wrong dimensionality; per-channel files
        of different sizes or types; unsupported pixel type; channel names that do not
        match the file. Messages name the manifest row, the file, the expectation and
        what was found.
    """
    manifest_row = row.get("row")
    paths = [Path(p) for p in row["abs_paths"]]
    names = split_list(row.get("channels"))
    if not paths:
        raise ImageReadError("no file", row=manifest_row, expected="at least one path",
                             received="none")
    for p in paths:
        if not p.exists():
            raise ImageReadError("file not found", path=p, row=manifest_row,
                                 expected="an existing file", received="no such file")
    kind = row.get("format") or detect_format(paths)
    source = _open_source(kind, paths, names, manifest_row)
    try:
        yield FieldReader(source, manifest_row)
    finally:
        source.close()


def probe_field(row: Mapping) -> FieldInfo:
    """Format, size, dtype and channel names of a field, from its headers only.

    See :func:`open_field` for ``row`` and the errors raised.
    """
    with open_field(row) as reader:
        return reader.info


def read_field(row: Mapping, channels: Sequence[str], *, check_blank: bool = True) -> np.ndarray:
    """Read the named channels of one field of the field index.

    Parameters
    ----------
    row : mapping
        One field-index row (see :func:`open_field`).
    channels : sequence of str
        Channel names, in the order wanted.
    check_blank : bool
        Raise :class:`BlankImageError` when every requested channel is constant.

    Returns
    -------
    image : (C, Y, X) or (C, Z, Y, X) ndarray
        uint8, uint16 or float32, native byte order; 3-D when the field has ``size_z > 1``.

    Raises
    ------
    ImageReadError, ImageShapeError, UnsupportedDtypeError, ChannelError, BlankImageError
        See :func:`open_field` and :meth:`FieldReader.read`.
    """
    with open_field(row) as reader:
        return reader.read(channels, check_blank=check_blank)


# --------------------------------------------------------------------------- sources


class _Source(Protocol):
    """One format's access to a field: ``info`` from headers, ``read`` for pixels."""

    info: FieldInfo
    where: str  # the file named in errors

    def read(self, idx: list[int]) -> np.ndarray:
        """The channels at file positions ``idx``: (len(idx), Z, Y, X)."""
        ...

    def close(self) -> None:
        """Release file handles."""
        ...


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zarr") or path.is_dir():
        return "ome-zarr"
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    if name.endswith(_TIFF_EXT):
        return "tiff"
    if name.endswith(_PNG_EXT):
        return "png"
    if name.endswith(_JPEG_EXT):
        return "jpeg"
    raise ImageReadError("unsupported file type", path=path,
                         expected="an .ome.tif, .tif, .png, .jpg file or an OME-Zarr .zarr folder",
                         received=path.suffix or "no suffix")


def _open_source(kind: str, paths: list[Path], names: list[str], row: int | None) -> _Source:
    if kind not in FORMATS:
        raise ImageReadError("unknown format", path=paths[0], row=row,
                             expected=f"one of {FORMATS}", received=repr(kind))
    if len(paths) > 1:
        return _PerChannelSource(paths, names, row)
    if kind == "ome-zarr":
        return _ZarrSource(paths[0], names, row)
    if kind in ("png", "jpeg"):
        return _PilSource(paths[0], names, row)
    return _TiffSource(paths[0], names, row, single_channel=False)


def _check_dtype(dtype: np.dtype, path: Path, row: int | None) -> str:
    name = np.dtype(dtype).newbyteorder("=").name
    if name not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError("unsupported pixel type", path=path, row=row,
                                    expected=" / ".join(SUPPORTED_DTYPES), received=name)
    return name


def _check_names(names: Sequence[str], n: int, path: Path, row: int | None,
                 source: str) -> tuple[str, ...]:
    if len(names) != n:
        raise ChannelError(
            f"{n} channel(s) in the file but {len(names)} name(s) from {source}",
            path=path, row=row, expected=f"{n} channel name(s)", received=str(list(names)),
        )
    if len(set(names)) != len(names):
        raise ChannelError("channel names repeat", path=path, row=row,
                           expected="distinct names", received=str(list(names)))
    return tuple(names)


@dataclass(frozen=True)
class _Axes:
    """Positions of C, Z, Y, X in an array (None: absent); ``drop``: length-1 extras."""

    c: int | None
    z: int | None
    y: int
    x: int
    drop: tuple[int, ...]

    def to_czyx(self, data: np.ndarray) -> np.ndarray:
        """A (C, Z, Y, X) view of ``data``, no copy."""
        index = tuple(0 if i in self.drop else slice(None) for i in range(data.ndim))
        data = data[index]
        kept = [i for i in range(len(index)) if i not in self.drop]
        order = [kept.index(a) for a in (self.c, self.z, self.y, self.x) if a is not None]
        data = data.transpose(order)
        if self.c is None:
            data = data[np.newaxis]
        if self.z is None:
            data = data[:, np.newaxis]
        return data

    def sizes(self, shape: Sequence[int]) -> tuple[int, int, int, int]:
        """(C, Z, Y, X) lengths."""
        def size(a: int | None) -> int:
            return 1 if a is None else int(shape[a])
        return size(self.c), size(self.z), size(self.y), size(self.x)


def _map_axes(axes: str, shape: Sequence[int], path: Path, row: int | None, *,
              positional: bool, single_channel: bool) -> _Axes:
    """Find C, Z, Y, X in an axes string.

    ``positional``: the letters other than Y, X (and a trailing interleaved S) carry no
    meaning, so the leading axes are C then Z (Z only for a one-channel file).
    """
    axes = axes.upper()
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise ImageShapeError("no Y and X axes", path=path, row=row,
                              expected="an image with Y and X axes", received=f"axes {axes!r} shape {tuple(shape)}")
    y, x = axes.index("Y"), axes.index("X")
    c = z = None
    if not positional:
        c = axes.index("C") if "C" in axes else None
        z = axes.index("Z") if "Z" in axes else None
        if c is None and "S" in axes:
            c = axes.index("S")
    elif axes[-1] == "S" and not single_channel:
        c = len(axes) - 1  # interleaved RGB samples (YXS) are the channels
    extra = [i for i in range(len(axes)) if i not in (y, x, c, z)]
    if positional:
        # Leading axes of a plain stack: C then Z (a one-channel file: Z only).
        slots = [s for s in ("c", "z") if not (s == "c" and (c is not None or single_channel))]
        for i in [i for i in extra if shape[i] > 1][:len(slots)]:
            if slots.pop(0) == "c":
                c = i
            else:
                z = i
            extra.remove(i)
    drop = [i for i in extra if shape[i] == 1]
    if len(drop) != len(extra):
        raise ImageShapeError(
            "wrong dimensionality",
            path=path, row=row,
            expected="axes among C, Z, Y, X (time and other axes of length 1)",
            received=f"axes {axes!r} shape {tuple(shape)}",
        )
    mapped = _Axes(c, z, y, x, tuple(drop))
    if single_channel and mapped.sizes(shape)[0] != 1:
        raise ImageShapeError(
            "a per-channel file holds several channels",
            path=path, row=row, expected="one channel: (Y, X) or (Z, Y, X)",
            received=f"axes {axes!r} shape {tuple(shape)}",
        )
    return mapped


# --------------------------------------------------------------------------- TIFF


class _TiffSource:
    def __init__(self, path: Path, names: list[str], row: int | None, *,
                 single_channel: bool) -> None:
        import tifffile

        self.path, self.where, self.row = path, str(path), row
        try:
            self.tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise ImageReadError(f"not a readable TIFF ({type(exc).__name__}: {exc})", path=path,
                                 row=row, expected="a TIFF file", received="unreadable data") from exc
        try:
            self._open(names, single_channel)
        except BaseException:
            self.tif.close()
            raise

    def _open(self, names: list[str], single_channel: bool) -> None:
        tif, path, row = self.tif, self.path, self.row
        _check_tiff_complete(tif, path, row)
        is_ome = bool(tif.is_ome)
        if _kind(path) == "ome-tiff" and not is_ome:
            raise ImageReadError("no OME-XML metadata", path=path, row=row,
                                 expected="an OME-TIFF (OME-XML in the first page)",
                                 received="a plain TIFF (truncated or mislabelled)")
        series = tif.series[0]
        self.series = series
        shape = tuple(series.shape)
        imagej_axes = bool(tif.is_imagej) and any(a in series.axes for a in "CZ")
        positional = not (is_ome or imagej_axes)
        # A plain stack named by one channel is a z-stack of that channel.
        single_channel = single_channel or (positional and len(names) == 1)
        self.axes = _map_axes(series.axes, shape, path, row, positional=positional,
                              single_channel=single_channel)
        n_c, n_z, n_y, n_x = self.axes.sizes(shape)
        dtype = _check_dtype(series.dtype, path, row)
        file_names = _ome_channel_names(tif.ome_metadata) if is_ome else []
        if single_channel:
            chosen, origin = names, "the manifest"
        elif file_names and len(file_names) == n_c:
            chosen, origin = file_names, "the OME-XML"
        else:
            chosen, origin = names, "the manifest's 'channels'"
        self.info = FieldInfo("ome-tiff" if is_ome else "tiff", n_z, n_y, n_x, dtype,
                              _check_names(chosen, n_c, path, row, origin))

    def read(self, idx: list[int]) -> np.ndarray:
        series = self.series
        if series.dataoffset is not None and int(series.keyframe.compression) == 1:
            # Contiguous, uncompressed: map the file and copy only the requested channels.
            dtype = np.dtype(series.dtype).newbyteorder(self.tif.byteorder)
            data = np.memmap(self.path, dtype=dtype, mode="r",
                             offset=series.dataoffset, shape=tuple(series.shape))
            return np.ascontiguousarray(self.axes.to_czyx(data)[idx])
        keys = self._plane_keys(idx)
        if keys is not None:
            n_c, n_z, n_y, n_x = self.axes.sizes(series.shape)
            data = self.tif.asarray(key=keys, series=0, maxworkers=1)
            return data.reshape(len(idx), n_z, n_y, n_x)
        data = self.axes.to_czyx(series.asarray(maxworkers=1))
        return data if idx == list(range(data.shape[0])) else data[idx]

    def _plane_keys(self, idx: list[int]) -> list[int] | None:
        """Page numbers of the requested channels, (C, Z) order, when every page is a plane."""
        series, axes = self.series, self.axes
        shape = tuple(series.shape)
        outer = [i for i in range(len(shape)) if i not in (axes.y, axes.x)]
        if (max(axes.y, axes.x) != len(shape) - 1 or min(axes.y, axes.x) != len(shape) - 2
                or len(series.pages) != math.prod(shape[i] for i in outer)
                or tuple(series.keyframe.shape) != (shape[axes.y], shape[axes.x])):
            return None
        n_z = self.axes.sizes(shape)[1]
        outer_shape = [shape[i] for i in outer]
        keys = []
        for c in idx:
            for z in range(n_z):
                at = [c if i == axes.c else z if i == axes.z else 0 for i in outer]
                keys.append(int(np.ravel_multi_index(at, outer_shape)) if outer else 0)
        return keys

    def close(self) -> None:
        self.tif.close()


def _check_tiff_complete(tif, path: Path, row: int | None) -> None:
    """Detect a truncated TIFF from its structure, without decoding pixels.

    tifffile tolerates a broken IFD chain (it logs and stops), so the chain's end and
    every page's data extent are checked against the file size here.
    """
    size = os.path.getsize(path)
    received = f"{size} bytes"
    pages = tif.pages
    n = len(pages)  # indexes the whole IFD chain
    info = tif.tiff
    try:
        fh = tif.filehandle
        last = pages[n - 1].offset
        fh.seek(last)
        ntags = struct.unpack(info.tagnoformat, fh.read(info.tagnosize))[0]
        fh.seek(last + info.tagnosize + ntags * info.tagsize)
        raw = fh.read(info.offsetsize)
        nxt = struct.unpack(info.offsetformat, raw)[0] if len(raw) == info.offsetsize else -1
    except (struct.error, OSError, IndexError) as exc:
        raise ImageReadError("truncated or corrupt TIFF (broken page list)", path=path, row=row,
                             expected="a complete TIFF", received=received) from exc
    if nxt != 0:
        raise ImageReadError(
            "truncated or corrupt TIFF: the page list points past the end of the file",
            path=path, row=row, expected="a complete TIFF", received=received)
    for page in pages:
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
        if ends and max(ends) > size:
            raise ImageReadError(
                "truncated TIFF: pixel data runs past the end of the file",
                path=path, row=row, expected=f"at least {max(ends)} bytes", received=received)


def _ome_channel_names(xml: str | None) -> list[str]:
    """``Channel/@Name`` of the first OME image; empty when any name is missing."""
    if not xml:
        return []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    image = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Image"), None)
    if image is None:
        return []
    names = [e.get("Name") for e in image.iter() if e.tag.rsplit("}", 1)[-1] == "Channel"]
    return names if names and all(names) else []


# --------------------------------------------------------------------------- PNG / JPEG


class _PilSource:
    """One PNG/JPEG: a single channel, or an RGB(A) image read band by band."""

    def __init__(self, path: Path, names: list[str], row: int | None, *,
                 single_channel: bool = False) -> None:
        from PIL import Image

        self.path, self.where, self.row = path, str(path), row
        try:
            self.img = Image.open(path)
        except Exception as exc:
            raise ImageReadError(f"not a readable image ({type(exc).__name__}: {exc})", path=path,
                                 row=row, expected="a PNG or JPEG file",
                                 received="unreadable data") from exc
        mode = self.img.mode
        dtype = {"L": "uint8", "LA": "uint8", "P": "uint8", "RGB": "uint8", "RGBA": "uint8",
                 "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "F": "float32"}.get(mode)
        if dtype is None:
            self.img.close()
            received = {"1": "bool", "I": "int32", "CMYK": "CMYK", "YCbCr": "YCbCr"}.get(mode, mode)
            raise UnsupportedDtypeError("unsupported pixel type", path=path, row=row,
                                        expected=" / ".join(SUPPORTED_DTYPES) + " (grey or RGB)",
                                        received=received)
        self.bands = len(self.img.getbands())
        # Several names on one colour file: its bands are the channels.
        self.split = (not single_channel and mode in ("RGB", "RGBA") and len(names) > 1)
        n_c = self.bands if self.split else 1
        width, height = self.img.size
        origin = "the manifest" if single_channel else "the manifest's 'channels'"
        try:
            channels = _check_names(names, n_c, path, row, origin)
        except ChannelError:
            self.img.close()
            raise
        self.info = FieldInfo(_kind(path), 1, height, width, dtype, channels)

    def read(self, idx: list[int]) -> np.ndarray:
        img = self.img
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        data = np.asarray(img)  # decodes; truncated files raise here
        if self.split:
            return np.ascontiguousarray(np.moveaxis(data, -1, 0)[idx])[:, np.newaxis]
        if data.ndim == 3:
            data = _one_plane(data[..., :3] if data.shape[-1] >= 3 else data[..., :1])
        return data[np.newaxis, np.newaxis]

    def close(self) -> None:
        self.img.close()


def _one_plane(rgb: np.ndarray) -> np.ndarray:
    """(Y, X, 3|1) -> (Y, X): the only non-zero band, else ITU-R 601 luminance."""
    if rgb.shape[-1] == 1:
        return rgb[..., 0]
    nonzero = [b for b in range(3) if rgb[..., b].any()]
    if len(nonzero) <= 1:
        return np.ascontiguousarray(rgb[..., nonzero[0] if nonzero else 0])
    luma = rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]
    return np.clip(np.rint(luma), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)


# --------------------------------------------------------------------------- per channel


class _PerChannelSource:
    """One single-channel file per name (HPA style); files must agree in size and type."""

    def __init__(self, paths: list[Path], names: list[str], row: int | None) -> None:
        self.where, self.row = str(paths[0]), row
        if len(paths) != len(names):
            raise ChannelError("one file per channel needs one name per file", path=paths[0],
                               row=row, expected=f"{len(paths)} names in 'channels'",
                               received=str(names))
        kind = detect_format(paths)
        self.sources: list[_Source] = []
        try:
            for p, name in zip(paths, names, strict=True):
                if kind in ("png", "jpeg"):
                    src: _Source = _PilSource(p, [name], row, single_channel=True)
                else:
                    src = _TiffSource(p, [name], row, single_channel=True)
                self.sources.append(src)
            first = self.sources[0].info
            for p, src in zip(paths[1:], self.sources[1:], strict=False):
                i = src.info
                if (i.size_z, i.size_y, i.size_x) != (first.size_z, first.size_y, first.size_x):
                    raise ImageShapeError(
                        "per-channel files differ in size",
                        path=p, row=row,
                        expected=f"{_zyx(first)} like {paths[0]}",
                        received=_zyx(i))
                if i.dtype != first.dtype:
                    raise ImageShapeError(
                        "per-channel files differ in pixel type",
                        path=p, row=row, expected=f"{first.dtype} like {paths[0]}",
                        received=i.dtype)
        except BaseException:
            self.close()
            raise
        self.info = FieldInfo(kind, first.size_z, first.size_y, first.size_x, first.dtype,
                              tuple(names))

    def read(self, idx: list[int]) -> np.ndarray:
        out = None
        for k, i in enumerate(idx):
            src = self.sources[i]
            self.where = src.where  # name the file being decoded if it fails
            plane = src.read([0])[0]  # (Z, Y, X)
            if out is None:
                out = np.empty((len(idx), *plane.shape), dtype=plane.dtype)
            out[k] = plane
        return out

    def close(self) -> None:
        for src in self.sources:
            src.close()


def _zyx(info: FieldInfo) -> str:
    return f"(Z, Y, X) = ({info.size_z}, {info.size_y}, {info.size_x})"


# --------------------------------------------------------------------------- OME-Zarr


class _ZarrSource:
    """An NGFF image group: level 0 of the first multiscale, axes from its metadata."""

    def __init__(self, path: Path, names: list[str], row: int | None) -> None:
        import zarr

        self.path, self.where, self.row = path, str(path), row
        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
        except Exception as exc:
            raise ImageReadError(f"not a readable Zarr group ({type(exc).__name__}: {exc})",
                                 path=path, row=row, expected="an OME-Zarr image group",
                                 received="unreadable store") from exc
        meta = attrs.get("ome", attrs)  # NGFF 0.5 (zarr v3) nests under "ome"
        try:
            multiscale = meta["multiscales"][0]
            dataset = multiscale["datasets"][0]["path"]
            axes_meta = multiscale.get("axes") or ["t", "c", "z", "y", "x"][-len(group[dataset].shape):]
            self.array = group[dataset]
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ImageReadError("no NGFF multiscales metadata", path=path, row=row,
                                 expected="multiscales[0].datasets[0].path naming an array",
                                 received=f"attributes {sorted(meta)}") from exc
        letters = "".join(_ngff_letter(a) for a in axes_meta)
        shape = tuple(self.array.shape)
        self.axes = _map_axes(letters, shape, path, row, positional=False, single_channel=False)
        dtype = _check_dtype(np.dtype(self.array.dtype), path, row)
        n_c, n_z, n_y, n_x = self.axes.sizes(shape)
        labels = [c.get("label") for c in (meta.get("omero") or {}).get("channels", [])]
        if labels and all(labels):
            chosen, origin = labels, "omero.channels[].label"
        else:
            chosen, origin = names, "the manifest's 'channels'"
        self.info = FieldInfo("ome-zarr", n_z, n_y, n_x, dtype,
                              _check_names(chosen, n_c, path, row, origin))

    def read(self, idx: list[int]) -> np.ndarray:
        ax = self.axes
        sel = tuple(idx if i == ax.c else 0 if i in ax.drop else slice(None)
                    for i in range(self.array.ndim))
        data = self.array.oindex[sel]  # reads only the chunks of the requested channels
        kept = _Axes(*(_shift(a, ax.drop) for a in (ax.c, ax.z, ax.y, ax.x)), drop=())
        return kept.to_czyx(np.asarray(data))

    def close(self) -> None:
        """Zarr holds no open handle between reads."""


def _ngff_letter(axis: Mapping | str) -> str:
    """NGFF axis -> C/Z/Y/X/T letter (``type: channel`` counts as C whatever its name)."""
    if isinstance(axis, Mapping):
        if axis.get("type") == "channel":
            return "C"
        name = str(axis.get("name", "?"))
    else:
        name = str(axis)
    name = name.upper()
    return name if name in ("C", "Z", "Y", "X", "T") else "Q"


def _shift(a: int | None, dropped: tuple[int, ...]) -> int | None:
    return None if a is None else a - sum(d < a for d in dropped)


# --------------------------------------------------------------------------- checks


def _is_blank(data: np.ndarray) -> bool:
    """True when every channel of ``data`` (C, Z, Y, X) is constant.

    Stops at the first varying plane, so a normal field costs one plane's comparison.
    """
    for c in range(data.shape[0]):
        first = data[c].flat[0]
        for z in range(data.shape[1]):
            plane = data[c, z]
            if first != first:  # NaN: constant only if every value is NaN
                if not np.isnan(plane).all():
                    return False
            elif (plane != first).any():
                return False
    return True
