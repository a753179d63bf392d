"""Pictures people look at: crop galleries and QC plots, returned as PNG bytes.

matplotlib with the Agg backend only, so this works headless (CI, pods) and in notebooks.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Display colours by channel role: protein green (the usual GFP rendering), nucleus blue,
# markers red then cyan/yellow.
_ROLE_RGB = {
    "protein": (0.1, 1.0, 0.1),
    "nucleus": (0.2, 0.4, 1.0),
}
_MARKER_RGB = [(1.0, 0.2, 0.2), (0.0, 0.9, 0.9), (0.9, 0.9, 0.0), (1.0, 0.0, 1.0)]


def figure_png(fig: plt.Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def composite_rgb(crop: np.ndarray, roles: Sequence[str]) -> np.ndarray:
    """Blend a normalised crop into an RGB picture.

    Parameters
    ----------
    crop : (C, H, W) or (C, Z, H, W) ndarray
        Values roughly in [0, 1]; a 3D crop is shown as its maximum projection over Z.
    roles : sequence of str
        Role of each channel (``"protein"``, ``"nucleus"``, or anything else = marker).

    Returns
    -------
    rgb : (H, W, 3) float ndarray in [0, 1]
    """
    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim == 4:
        crop = crop.max(axis=1)
    rgb = np.zeros((*crop.shape[1:], 3), np.float32)
    markers = iter(_MARKER_RGB)
    for channel, role in zip(crop, roles, strict=True):
        color = _ROLE_RGB.get(role) or next(markers, (0.6, 0.6, 0.6))
        # Markers are dimmed so the protein stays the focus of the picture.
        weight = 1.0 if role in _ROLE_RGB else 0.5
        rgb += weight * np.clip(channel, 0, 1)[..., None] * np.asarray(color, np.float32)
    return np.clip(rgb, 0, 1)


def crop_gallery(
    groups: Mapping[str, np.ndarray],
    roles: Sequence[str],
    *,
    per_group: int = 8,
    title: str | None = None,
) -> bytes:
    """A grid of crops, one row per group (compartment, protein, ...), as PNG bytes.

    Parameters
    ----------
    groups : mapping of str to (N, C, H, W[, Z]) ndarray
        Crops of each group; the first ``per_group`` are shown.
    roles : sequence of str
        Role of each channel, see :func:`composite_rgb`.
    """
    names = list(groups)
    n_rows, n_cols = max(len(names), 1), per_group
    # Constrained layout keeps the title snug above the grid whatever the number of rows.
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols + 1.6, 1.2 * n_rows + 0.4),
                             squeeze=False, layout="constrained")
    for r, name in enumerate(names):
        crops = groups[name][:per_group]
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(crops):
                ax.imshow(composite_rgb(crops[c], roles), interpolation="nearest")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def qc_figure(rejected: Mapping[str, int], kept: int, areas: np.ndarray | None = None) -> bytes:
    """Bar chart of kept vs rejected cells per QC reason, and the nucleus-area histogram."""
    n = 2 if areas is not None and len(areas) else 1
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3), squeeze=False)
    labels = ["kept", *rejected]
    values = [kept, *rejected.values()]
    axes[0, 0].barh(labels, values, color=["tab:green"] + ["tab:red"] * len(rejected))
    axes[0, 0].set_xlabel("cells")
    axes[0, 0].set_title("QC")
    if n == 2:
        axes[0, 1].hist(areas, bins=40, color="tab:blue")
        axes[0, 1].set_xlabel("nucleus area (px)")
        axes[0, 1].set_title("kept nuclei")
    fig.tight_layout()
    return figure_png(fig)
