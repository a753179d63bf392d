"""Write a rendered field: one OME-TIFF for the images, one TIFF of ground-truth labels."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import tifffile

from cellrep_ml.io.atomic import atomic_path

__all__ = ["write_labels", "write_ome_tiff"]


def _stable_uuid(key: str) -> str:
    # OME-XML carries a UUID; derive it from the field's key so files are reproducible.
    return f"urn:uuid:{uuid.UUID(bytes=hashlib.md5(key.encode()).digest())}"


def write_ome_tiff(path: Path, image: np.ndarray, channels: tuple[str, ...], *,
                   pixel_size_um: float, key: str, z_step_um: float | None = None) -> Path:
    """Write ``image`` as a single-series OME-TIFF with named channels, atomically.

    Parameters
    ----------
    path : Path
        Destination (``.ome.tif``); parent folders are created.
    image : (C, Y, X) or (C, Z, Y, X) ndarray of uint16
    channels : tuple of str
        Channel names in axis order, stored in the OME metadata.
    pixel_size_um : float
        Lateral pixel size, micrometres.
    key : str
        Unique name of the field; seeds the OME UUID (same key → byte-identical file).
    z_step_um : float, optional
        Axial step for 3D images.
    """
    if image.shape[0] != len(channels):
        raise ValueError(f"{path}: {image.shape[0]} channels in the image, {len(channels)} names")
    axes = "CYX" if image.ndim == 3 else "CZYX"
    meta = {
        "axes": axes,
        "Channel": {"Name": list(channels)},
        "PhysicalSizeX": pixel_size_um,
        "PhysicalSizeY": pixel_size_um,
        "UUID": _stable_uuid(key),
    }
    if image.ndim == 4 and z_step_um is not None:
        meta["PhysicalSizeZ"] = z_step_um
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, ome=True, photometric="minisblack", metadata=meta)
    return path


def write_labels(path: Path, nuclei: np.ndarray, cells: np.ndarray) -> Path:
    """Write ground-truth labels as one TIFF, (2, [Z,] Y, X) uint16: nuclei, then cells."""
    n = int(max(nuclei.max(initial=0), cells.max(initial=0)))
    dtype = np.uint16 if n < 65536 else np.uint32
    stack = np.stack([nuclei, cells]).astype(dtype)
    axes = "CYX" if nuclei.ndim == 2 else "CZYX"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, stack, photometric="minisblack",
                         metadata={"axes": axes, "labels": ["nuclei", "cells"]})
    return path
