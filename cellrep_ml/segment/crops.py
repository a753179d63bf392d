"""Single-cell crops around segmented nuclei: geometry, normalisation, QC.

One function, :func:`crop_cells`, turns a field and its labels into model-ready crops.
Recipes of the papers it follows (see also ``IMPLEMENTATION_NOTES.md``):

- PCI (Lu et al. 2019): fixed-size crops around each cell centre, min–max per crop per
  channel, cells whose mask covers < 5 % or > 95 % of the crop dropped; human images:
  512-px crops rescaled to 64 px, marker channels clipped below 0.05.
- cytoself (Kobayashi et al. 2021): nucleus-centred crops, protein min–max to [0, 1], and
  a nuclear signed-distance channel (positive inside, negative outside, in [−1, 1]).

"Nucleus" below means whatever object the labels mark: for yeast screens without a
nuclear stain, whole cells segmented on a cytosol marker.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi
from skimage.transform import resize

from cellrep_ml.segment._nuclei import segment_nuclei

__all__ = ["DISTANCE_CHANNEL", "CellCrops", "CropOptions", "crop_cells"]

#: Name of the optional signed-distance channel (cytoself's second input channel).
DISTANCE_CHANNEL = "nucleus_distance"

CROP_REJECT_REASONS = ("mask_fraction_low", "mask_fraction_high")

@dataclass(frozen=True)
class CropOptions:
    """How crops are made; read from ``screen.yaml`` by :meth:`from_config`.

    Parameters
    ----------
    crop_size : int
        Side of the square window around each nucleus, in field pixels.
    output_size : int, optional
        Crops are rescaled to this side (area averaging); ``None`` keeps ``crop_size``.
    nucleus_distance : bool
        Append the signed-distance channel ``"nucleus_distance"`` (cytoself).
    clip_markers_below : float, optional
        After normalisation, set marker-channel values below this to 0 (PCI human: 0.05).
    mask_fraction : (float, float)
        QC: keep a cell when its own nucleus covers this fraction range of the crop.
    segmentation : mapping
        Keyword arguments for :func:`~cellrep_ml.segment.segment_nuclei`.
    """

    crop_size: int = 64
    output_size: int | None = None
    nucleus_distance: bool = False
    clip_markers_below: float | None = None
    mask_fraction: tuple[float, float] = (0.05, 0.95)
    segmentation: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> CropOptions:
        """Options of a :class:`~cellrep_ml.io.screen_config.ScreenConfig`.

        Geometry comes from ``crop_size``/``output_size``; the rest from the optional
        ``crops:`` mapping of ``screen.yaml`` (kept in ``config.extra``), e.g.::

            crops:
              nucleus_distance: true
              clip_markers_below: 0.05
              mask_fraction: [0.05, 0.95]
              segmentation: {sigma: 2.0, method: otsu, min_area: 400}

        Raises
        ------
        ValueError
            On an unknown key under ``crops:``, naming the allowed keys.
        """
        extra = dict((config.extra or {}).get("crops") or {})
        allowed = {f.name for f in fields(cls)} - {"crop_size", "output_size"}
        unknown = set(extra) - allowed
        if unknown:
            raise ValueError(
                f"screen.yaml crops: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}"
            )
        if "mask_fraction" in extra:
            extra["mask_fraction"] = tuple(float(v) for v in extra["mask_fraction"])
        seg = dict(extra.get("segmentation") or {})
        seg_allowed = set(inspect.signature(segment_nuclei).parameters) - {"image", "return_rejected"}
        if set(seg) - seg_allowed:
            raise ValueError(
                f"screen.yaml crops.segmentation: unknown keys {sorted(set(seg) - seg_allowed)}; "
                f"allowed {sorted(seg_allowed)}"
            )
        return cls(crop_size=config.crop_size, output_size=config.output_size, **extra)


@dataclass(frozen=True)
class CellCrops:
    """Crops of the kept cells of one field, aligned row by row.

    Attributes
    ----------
    images : (N, C, H, W) or (N, C, Z, H, W) ndarray of float32
        Normalised crops; channel order of the input, then ``"nucleus_distance"`` if asked.
    masks : (N, H, W) or (N, Z, H, W) ndarray of uint8
        The cell's own nucleus (1) in the crop.
    labels : (N,) ndarray of int32
        Nucleus label in the field's label image.
    centroids : (N, 3) ndarray of float64
        (z, y, x) centroid in field pixels; z = 0 for 2D.
    areas : (N,) ndarray of int64
        Nucleus area in pixels (voxels in 3D).
    mask_fraction : (N,) ndarray of float64
        Fraction of the crop covered by the nucleus (its Y/X projection in 3D).
    padded : (N,) ndarray of bool
        The window reached outside the field; those pixels are 0 in every channel.
    rejected : dict of str to int
        Cells dropped by QC, per reason.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    areas: np.ndarray
    mask_fraction: np.ndarray
    padded: np.ndarray
    rejected: dict[str, int]

    def __len__(self) -> int:
        return len(self.labels)


def crop_cells(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    crop_size: int,
    output_size: int | None = None,
    marker_channels: Sequence[int] = (),
    clip_markers_below: float | None = None,
    nucleus_distance: bool = False,
    mask_fraction: tuple[float, float] = (0.05, 0.95),
) -> CellCrops:
    """Cut, QC and normalise one crop per labelled nucleus.

    Parameters
    ----------
    image : (C, Y, X) or (C, Z, Y, X) ndarray
        The field, channels first.
    labels : (Y, X) or (Z, Y, X) ndarray of int
        Nuclei (or cells), 0 = background, e.g. from :func:`segment_nuclei`.
    crop_size : int
        Window side in field pixels. The window starts at ``round(centroid) - crop_size // 2``,
        so the centroid falls on pixel ``crop_size // 2``. Parts outside the field are 0.
        3D crops keep the full Z stack.
    output_size : int, optional
        Rescale each crop to this side: block averaging when ``crop_size`` is a multiple
        of it, else anti-aliased linear resampling (scikit-image ``resize``).
    marker_channels : sequence of int
        Indices of the marker channels, for ``clip_markers_below``.
    clip_markers_below : float, optional
        Normalised marker values below this become 0 (PCI human: 0.05).
    nucleus_distance : bool
        Append a signed Euclidean distance channel of the field's nuclear mask (every
        nucleus, as the nucleus channel shows them): positive inside nuclei, negative
        outside, each side divided by its largest magnitude in the crop so the channel
        lies in [−1, 1]; 0 outside the field. In 3D it is computed per Z plane.
    mask_fraction : (float, float)
        QC bounds on the fraction of the crop covered by the cell's own nucleus.

    Returns
    -------
    CellCrops
        Image channels are min–max normalised to [0, 1] per crop per channel over the
        pixels inside the field (a constant channel becomes 0); crops are float32.

    Raises
    ------
    ValueError
        If shapes disagree or sizes are not positive.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != labels.ndim + 1 or image.shape[1:] != labels.shape:
        raise ValueError(
            f"crop_cells: image (C, ...) {image.shape} and labels {labels.shape} disagree"
        )
    if crop_size < 1 or (output_size is not None and output_size < 1):
        raise ValueError(f"crop_cells: sizes must be positive, got {crop_size}, {output_size}")
    lo, hi = mask_fraction
    rejected = dict.fromkeys(CROP_REJECT_REASONS, 0)

    ids, areas, centroids = _centroids(labels)
    half = crop_size // 2
    origin = np.rint(centroids[:, -2:]).astype(np.int64) - half  # (N, 2) y0, x0
    pad = crop_size
    label_windows = _windows(np.pad(labels, _pad_width(labels.ndim, pad)), origin + pad, crop_size)
    own = label_windows == ids.reshape((-1,) + (1,) * (label_windows.ndim - 1))
    own_yx = own.any(axis=1) if labels.ndim == 3 else own  # (N, H, W) projection in 3D
    fraction = own_yx.reshape(len(ids), -1).mean(axis=1) if len(ids) else np.zeros(0)
    low, high = fraction < lo, fraction > hi
    rejected["mask_fraction_low"] = int(low.sum())
    rejected["mask_fraction_high"] = int(high.sum())
    keep = ~(low | high)

    ids, areas, centroids, origin = ids[keep], areas[keep], centroids[keep], origin[keep]
    fraction, own, label_windows = fraction[keep], own[keep], label_windows[keep]
    size_y, size_x = labels.shape[-2:]
    padded = (
        (origin[:, 0] < 0) | (origin[:, 1] < 0)
        | (origin[:, 0] + crop_size > size_y) | (origin[:, 1] + crop_size > size_x)
    )

    crops = _windows(np.pad(image, ((0, 0), *_pad_width(labels.ndim, pad))), origin + pad, crop_size)
    crops = _minmax(crops.astype(np.float32), _valid_boxes(origin, crop_size, (size_y, size_x)))
    if nucleus_distance:
        # Computed on the whole field (distances near a crop's edge see nuclei beyond it);
        # outside the field the channel is 0, like every other channel's padding.
        signed = np.pad(_signed_distance(labels > 0), _pad_width(labels.ndim, pad))
        dist = _scale_signed(_windows(signed, origin + pad, crop_size))
        crops = np.concatenate([crops, dist[:, None]], axis=1)

    masks = own.astype(np.uint8)
    if output_size is not None and output_size != crop_size and len(ids):
        crops = _rescale(crops, output_size, order=1)
        masks = (_rescale(masks.astype(np.float32), output_size, order=1) >= 0.5).astype(np.uint8)
    if clip_markers_below is not None and len(marker_channels):
        m = crops[:, list(marker_channels)]
        m[m < clip_markers_below] = 0.0
        crops[:, list(marker_channels)] = m

    if output_size is not None and not len(ids):
        crops = np.zeros((0, *crops.shape[1:-2], output_size, output_size), np.float32)
        masks = np.zeros((0, *masks.shape[1:-2], output_size, output_size), np.uint8)
    return CellCrops(
        images=crops.astype(np.float32, copy=False),
        masks=masks,
        labels=ids.astype(np.int32),
        centroids=centroids,
        areas=areas,
        mask_fraction=fraction,
        padded=padded,
        rejected=rejected,
    )


def _centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, areas and (z, y, x) centroids of every label, by bincount on foreground pixels."""
    flat = np.flatnonzero(labels)
    lab = labels.ravel()[flat]
    n = int(lab.max()) if lab.size else 0
    counts = np.bincount(lab, minlength=n + 1)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    coords = np.unravel_index(flat, labels.shape)
    cent = np.zeros((len(ids), 3))
    for axis, c in zip(range(3 - labels.ndim, 3), coords, strict=True):
        cent[:, axis] = np.bincount(lab, weights=c, minlength=n + 1)[ids] / counts[ids]
    return ids.astype(np.int32), counts[ids].astype(np.int64), cent


def _pad_width(ndim: int, pad: int) -> tuple[tuple[int, int], ...]:
    return ((0, 0),) * (ndim - 2) + ((pad, pad), (pad, pad))


def _windows(arr: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """Copy (size × size) Y/X windows starting at ``origin`` (N, 2) out of ``arr``.

    ``arr`` is (…, Y, X); returns (N, …, size, size). One fancy-index on a strided
    window view copies every crop at once.
    """
    view = sliding_window_view(arr, (size, size), axis=(-2, -1))  # (..., Y', X', s, s)
    out = view[..., origin[:, 0], origin[:, 1], :, :]  # (..., N, s, s)
    return np.moveaxis(out, -3, 0)


def _valid_boxes(origin: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) in-field part of each window, in window coordinates: y0, y1, x0, x1."""
    y0 = np.clip(-origin[:, 0], 0, size)
    x0 = np.clip(-origin[:, 1], 0, size)
    y1 = np.clip(shape[0] - origin[:, 0], 0, size)
    x1 = np.clip(shape[1] - origin[:, 1], 0, size)
    return np.stack([y0, y1, x0, x1], axis=1)


def _minmax(crops: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Min–max per crop per channel to [0, 1] over the in-field ``boxes``; 0 outside them.

    ``crops`` (N, C, [Z,] H, W) float32 is modified in place and returned.
    """
    n, c = crops.shape[:2]
    size = crops.shape[-1]
    flat = crops.reshape(n, c, int(np.prod(crops.shape[2:])))
    lo = flat.min(axis=-1)
    hi = flat.max(axis=-1)
    padded = np.flatnonzero((boxes != [0, size, 0, size]).any(axis=1))
    # Only crops that reach outside the field (few) need their statistics recomputed on
    # the in-field box; the zero padding must not count as the darkest pixel.
    for i in padded:
        y0, y1, x0, x1 = boxes[i]
        inside = crops[i, ..., y0:y1, x0:x1].reshape(c, -1)
        lo[i] = inside.min(axis=-1)
        hi[i] = inside.max(axis=-1)
    span = hi - lo
    # A constant channel carries no pattern: map it to 0 rather than divide by zero.
    scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    flat -= lo[..., None]
    flat *= scale[..., None]
    for i in padded:
        y0, y1, x0, x1 = boxes[i]
        keep = crops[i, ..., y0:y1, x0:x1].copy()
        crops[i] = 0.0
        crops[i, ..., y0:y1, x0:x1] = keep
    return crops


def _signed_distance(nuclei: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance to the nuclear boundary: > 0 inside, < 0 outside.

    ``nuclei`` is the whole field's mask, (Y, X) or (Z, Y, X); 3D is done per Z plane.
    Computed on the field, not per crop, so distances near a crop's edge still see the
    nearest nucleus outside it.
    """
    if nuclei.ndim == 3:
        return np.stack([_signed_distance(plane) for plane in nuclei])
    if not nuclei.any() or nuclei.all():
        return np.zeros(nuclei.shape, np.float32)  # no boundary: no signal
    inside = ndi.distance_transform_edt(nuclei).astype(np.float32)
    outside = ndi.distance_transform_edt(~nuclei).astype(np.float32)
    return inside - outside


def _scale_signed(dist: np.ndarray) -> np.ndarray:
    """Scale each crop's positive part by its maximum and negative part by its minimum."""
    flat = dist.reshape(len(dist), int(np.prod(dist.shape[1:])))
    pos = np.maximum(flat, 0.0)
    neg = np.minimum(flat, 0.0)
    pmax = pos.max(axis=1, keepdims=True)
    nmin = -neg.min(axis=1, keepdims=True)
    pos = np.divide(pos, pmax, out=np.zeros_like(pos), where=pmax > 0)
    neg = np.divide(neg, nmin, out=np.zeros_like(neg), where=nmin > 0)
    return (pos + neg).reshape(dist.shape)


def _rescale(crops: np.ndarray, size: int, *, order: int) -> np.ndarray:
    """Resize the last two axes to (size, size); area averaging for integer factors."""
    h = crops.shape[-1]
    if h % size == 0:
        f = h // size
        lead = crops.shape[:-2]
        return crops.reshape(*lead, size, f, size, f).mean(axis=(-3, -1), dtype=np.float32)
    target = crops.shape[:-2] + (size, size)
    return resize(crops, target, order=order, anti_aliasing=size < h,
                  preserve_range=True).astype(np.float32)
