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

from cellrep_ml.segment._nuclei import Foreground, segment_nuclei

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
    return _crop_cells(
        image, labels, None, crop_size=crop_size, output_size=output_size,
        marker_channels=marker_channels, clip_markers_below=clip_markers_below,
        nucleus_distance=nucleus_distance, mask_fraction=mask_fraction,
    )


def _crop_cells(
    image: np.ndarray,
    labels: np.ndarray,
    foreground: Foreground | None,
    *,
    crop_size: int,
    output_size: int | None = None,
    marker_channels: Sequence[int] = (),
    clip_markers_below: float | None = None,
    nucleus_distance: bool = False,
    mask_fraction: tuple[float, float] = (0.05, 0.95),
) -> CellCrops:
    """:func:`crop_cells`, given the labelled pixels of ``labels`` if already listed."""
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

    fg = Foreground.of(labels) if foreground is None else foreground
    ids, areas, centroids = _centroids(fg, labels.ndim)
    half = crop_size // 2
    origin = np.rint(centroids[:, -2:]).astype(np.int64) - half  # (N, 2) y0, x0
    size_y, size_x = labels.shape[-2:]
    if labels.ndim == 2:
        # Each cell's own pixels, moved into its window: no label windows to cut and compare.
        rank = np.zeros(int(ids[-1]) + 1 if len(ids) else 1, np.intp)
        rank[ids] = np.arange(len(ids))
        cell = rank[fg.lab]
        ry = fg.coords[0] - origin[cell, 0]
        rx = fg.coords[1] - origin[cell, 1]
        inside = (ry >= 0) & (ry < crop_size) & (rx >= 0) & (rx < crop_size)
        cell, ry, rx = cell[inside], ry[inside], rx[inside]
        fraction = np.bincount(cell, minlength=len(ids)) / (crop_size * crop_size)
    else:
        # 3D: the fraction is that of the Y/X projection; cut the label windows.
        label_windows = _windows(labels, origin, crop_size)
        own = label_windows == ids.reshape((-1,) + (1,) * (label_windows.ndim - 1))
        del label_windows
        fraction = (np.count_nonzero(own.any(axis=1).reshape(len(ids), -1), axis=1)
                    / (crop_size * crop_size) if len(ids) else np.zeros(0))
    low, high = fraction < lo, fraction > hi
    rejected["mask_fraction_low"] = int(low.sum())
    rejected["mask_fraction_high"] = int(high.sum())
    keep = ~(low | high)

    if labels.ndim == 2:
        slot = np.cumsum(keep) - 1  # row of each kept cell
        chosen = keep[cell]
        own = np.zeros((int(keep.sum()), crop_size, crop_size), bool)
        own[slot[cell[chosen]], ry[chosen], rx[chosen]] = True
    elif not keep.all():
        own = own[keep]
    if not keep.all():
        ids, areas, centroids, origin = ids[keep], areas[keep], centroids[keep], origin[keep]
        fraction = fraction[keep]
    padded = (
        (origin[:, 0] < 0) | (origin[:, 1] < 0)
        | (origin[:, 0] + crop_size > size_y) | (origin[:, 1] + crop_size > size_x)
    )

    crops = _windows(image, origin, crop_size)
    crops = _minmax(crops, _valid_boxes(origin, crop_size, (size_y, size_x)))
    if nucleus_distance:
        # Computed on the whole field (distances near a crop's edge see nuclei beyond it);
        # outside the field the channel is 0, like every other channel's padding.
        dist = _scale_signed(_windows(_signed_distance(labels > 0), origin, crop_size))
        crops = np.concatenate([crops, dist[:, None]], axis=1)

    masks = own.view(np.uint8)  # bool and uint8 share their bytes
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


def _centroids(fg: Foreground, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, areas and (z, y, x) centroids of every label, by bincount on its pixels."""
    n = int(fg.lab.max()) if fg.lab.size else 0
    counts = np.bincount(fg.lab, minlength=n + 1)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    cent = np.zeros((len(ids), 3))
    for axis, c in zip(range(3 - ndim, 3), fg.coords, strict=True):
        cent[:, axis] = np.bincount(fg.lab, weights=c, minlength=n + 1)[ids] / counts[ids]
    return ids.astype(np.int32), counts[ids].astype(np.int64), cent


def _windows(arr: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """Copy (size × size) Y/X windows starting at ``origin`` (N, 2) out of ``arr``.

    ``arr`` is (…, Y, X); returns (N, …, size, size), C-contiguous, with 0 wherever a
    window reaches outside ``arr``. One fancy index on a strided window view copies every
    window at once, already in the output's order; the few that reach outside (their
    origins clipped for that copy) are then redone by hand, so the field is not padded
    whole (a 4 MB copy per field) for them.
    """
    ny, nx = arr.shape[-2:]
    if ny < size or nx < size:  # a field smaller than one window: pad it to one
        arr = np.pad(arr, ((0, 0),) * (arr.ndim - 2) + ((0, max(0, size - ny)), (0, max(0, size - nx))))
    view = sliding_window_view(arr, (size, size), axis=(-2, -1))  # (..., Y', X', s, s)
    view = np.moveaxis(view, (-4, -3), (0, 1))  # (Y', X', ..., s, s)
    oy = np.clip(origin[:, 0], 0, view.shape[0] - 1)
    ox = np.clip(origin[:, 1], 0, view.shape[1] - 1)
    out = view[oy, ox]
    for i in np.flatnonzero((oy != origin[:, 0]) | (ox != origin[:, 1])).tolist():
        y0, x0 = (int(v) for v in origin[i])
        out[i] = 0
        ys, ye = max(y0, 0), min(y0 + size, ny)
        xs, xe = max(x0, 0), min(x0 + size, nx)
        if ys < ye and xs < xe:
            out[i, ..., ys - y0:ye - y0, xs - x0:xe - x0] = arr[..., ys:ye, xs:xe]
    return out


def _valid_boxes(origin: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) in-field part of each window, in window coordinates: y0, y1, x0, x1."""
    y0 = np.clip(-origin[:, 0], 0, size)
    x0 = np.clip(-origin[:, 1], 0, size)
    y1 = np.clip(shape[0] - origin[:, 0], 0, size)
    x1 = np.clip(shape[1] - origin[:, 1], 0, size)
    return np.stack([y0, y1, x0, x1], axis=1)


def _minmax(crops: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Min–max per crop per channel to [0, 1] over the in-field ``boxes``; 0 outside them.

    ``crops`` (N, C, [Z,] H, W) of any real dtype; returns float32 ``(x - lo) * (1 / (hi -
    lo))`` with ``x``, ``lo``, ``hi`` as float32. The extremes are taken on the input (the
    cast to float32 keeps their order). The input is cast into the output first and then
    shifted and scaled in place: numpy's subtraction with a cast inside runs through its
    buffered casting loop, ~2× slower than a plain cast plus two in-place float32 passes.
    """
    n, c = crops.shape[:2]
    size = crops.shape[-1]
    flat = crops.reshape(n, c, int(np.prod(crops.shape[2:])))
    lo = flat.min(axis=-1).astype(np.float32)
    hi = flat.max(axis=-1).astype(np.float32)
    # Crops that reach outside the field (a few %) take their extremes over the in-field
    # box only: the zero padding must not count as the darkest pixel.
    edge = np.flatnonzero((boxes != [0, size, 0, size]).any(axis=1))
    if len(edge):
        inside = _inside(boxes[edge], size, crops.ndim)  # (n_edge, 1, [1,] H, W)
        sub = crops[edge]
        top, bottom = _extremes(crops.dtype)
        lo[edge] = np.where(inside, sub, top).reshape(len(edge), c, -1).min(axis=-1)
        hi[edge] = np.where(inside, sub, bottom).reshape(len(edge), c, -1).max(axis=-1)
    span = hi - lo
    # A constant channel carries no pattern: map it to 0 rather than divide by zero.
    scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    out = np.empty(crops.shape, np.float32)
    flat_out = out.reshape(flat.shape)
    np.copyto(flat_out, flat, casting="unsafe")
    flat_out -= lo[..., None]
    flat_out *= scale[..., None]
    if len(edge):
        out[edge] = np.where(inside, out[edge], np.float32(0.0))
    return out


def _inside(boxes: np.ndarray, size: int, ndim: int) -> np.ndarray:
    """(n, 1, …, size, size) bool: the in-field part (``boxes`` y0, y1, x0, x1) of each window."""
    grid = np.arange(size)
    rows = (grid >= boxes[:, :1]) & (grid < boxes[:, 1:2])
    cols = (grid >= boxes[:, 2:3]) & (grid < boxes[:, 3:4])
    inside = rows[:, :, None] & cols[:, None, :]
    return inside.reshape(len(boxes), *(1,) * (ndim - 3), size, size)


def _extremes(dtype: np.dtype) -> tuple:
    """The largest and smallest values of ``dtype`` (fillers that never win a min / max)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return info.max, info.min
    return np.inf, -np.inf


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
