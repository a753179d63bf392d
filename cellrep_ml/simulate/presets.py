"""Screen presets: channels, optics and the morphology of each cell line.

A :class:`Preset` says what a simulated screen looks like on disk (channel names and
roles, 2D or 3D, the crop recipe of the matching paper) and how it is imaged (pixel
size, point-spread function, camera). A :class:`CellLine` holds the morphology that makes
cell lines a real axis of variation: nucleus and cell size, elongation, shape
irregularity, nucleus/cell ratio, density and clumping. Lengths are in pixels of the
preset's own pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cellrep_ml.io.screen_config import ChannelRoles, ScreenConfig

__all__ = ["PRESETS", "CellLine", "Preset", "get_preset"]


@dataclass(frozen=True)
class CellLine:
    """Morphology of one cell line, in pixels.

    Parameters
    ----------
    name : str
        A real cell line or strain name (``"HEK293T"``), used in paths and the manifest.
    nucleus_radius : float
        Mean nucleus radius (geometric mean of the semi-axes), pixels.
    nucleus_radius_cv : float
        Coefficient of variation of the nucleus radius between cells.
    cell_ratio : float
        Mean cell radius / nucleus radius (before competition with neighbours).
    elongation : float
        Mean ratio of the cell's long to short semi-axis (1 = round).
    nucleus_elongation : float
        Mean long/short semi-axis ratio of the nucleus.
    irregularity : float
        Amplitude of the low-order harmonics that roughen the cell outline (0 = ellipse).
    density : float
        Fraction of the field covered by cells if none overlapped (sets the cell count).
    clumping : float
        Fraction of cells placed in clusters around parent points (0 = Poisson).
    nucleus_offset : float
        Mean distance of the nucleus from the cell centre, in nucleus radii.
    """

    name: str
    nucleus_radius: float
    nucleus_radius_cv: float
    cell_ratio: float
    elongation: float
    nucleus_elongation: float
    irregularity: float
    density: float
    clumping: float
    nucleus_offset: float


@dataclass(frozen=True)
class Preset:
    """How a simulated screen is laid out on disk and imaged.

    Parameters
    ----------
    name : str
        Preset name, also the dataset name prefix.
    roles : ChannelRoles
        Which channel name is the protein, the nucleus and the markers.
    channels : tuple of str
        Channel names in file order.
    marker_patterns : dict
        Channel name → localization pattern drawn in that reference channel
        (``"dna"`` is the nuclear stain; ``"cytosol"``, ``"microtubules"``, ...).
    cell_lines : tuple of CellLine
        The cell lines, in the order ``n_cell_lines`` takes them.
    field_size : int
        Default field width and height, pixels.
    crop_size, output_size : int
        Crop recipe written to ``screen.yaml``.
    pixel_size_um : float
        Pixel size, micrometres.
    psf_sigma : float
        Gaussian PSF standard deviation in pixels (lateral).
    dims : int
        2 (C, Y, X) or 3 (C, Z, Y, X).
    size_z : int
        Number of z-slices (3D presets).
    psf_sigma_z : float
        Axial PSF standard deviation in slices (3D presets).
    z_scale : float
        Slices per pixel of cell height: converts lateral sizes to z extents (3D presets).
    controls : tuple of str
        Control "proteins" added to the catalog (the β-VAE paper's five controls).
    """

    name: str
    roles: ChannelRoles
    channels: tuple[str, ...]
    marker_patterns: dict[str, str]
    cell_lines: tuple[CellLine, ...]
    field_size: int
    crop_size: int
    output_size: int | None
    pixel_size_um: float
    psf_sigma: float
    dims: int = 2
    size_z: int = 1
    psf_sigma_z: float = 1.0
    z_scale: float = 1.0
    controls: tuple[str, ...] = ()
    # The crop options of the paper this preset imitates (``crops:`` in screen.yaml).
    crops: dict = field(default_factory=dict)

    def screen_config(self, dataset: str, *, extra: dict | None = None) -> ScreenConfig:
        """The ``screen.yaml`` description of a screen simulated with this preset."""
        return ScreenConfig(
            dataset=dataset,
            channels=self.roles,
            dims=self.dims,
            crop_size=self.crop_size,
            output_size=self.output_size,
            pixel_size_um=self.pixel_size_um,
            extra={**({"crops": dict(self.crops)} if self.crops else {}), **(extra or {})},
        )

    def cell_line(self, name: str) -> CellLine:
        """The cell line called ``name``."""
        for line in self.cell_lines:
            if line.name == name:
                return line
        raise ValueError(f"preset {self.name!r} has no cell line {name!r}; "
                         f"expected one of {[c.name for c in self.cell_lines]}")


# Human lines of the opencell preset (nucleus ~20 px radius: >= 5 % of a 100-px crop, the
# PCI/cytoself QC bound).
# Differences follow the lines' known habits: HEK293T small, round and clumped; U2OS large,
# flat and spread; HeLa mid-size, irregular; A549 large nuclei, elongated cells.
_HUMAN_2D = (
    CellLine("HEK293T", nucleus_radius=17.0, nucleus_radius_cv=0.12, cell_ratio=1.55,
             elongation=1.15, nucleus_elongation=1.1, irregularity=0.08, density=0.6,
             clumping=0.7, nucleus_offset=0.15),
    CellLine("U2OS", nucleus_radius=22.0, nucleus_radius_cv=0.15, cell_ratio=2.4,
             elongation=1.6, nucleus_elongation=1.3, irregularity=0.22, density=0.55,
             clumping=0.1, nucleus_offset=0.35),
    CellLine("HeLa", nucleus_radius=19.5, nucleus_radius_cv=0.14, cell_ratio=2.0,
             elongation=1.3, nucleus_elongation=1.15, irregularity=0.3, density=0.6,
             clumping=0.35, nucleus_offset=0.25),
    CellLine("A549", nucleus_radius=24.0, nucleus_radius_cv=0.18, cell_ratio=1.75,
             elongation=1.9, nucleus_elongation=1.45, irregularity=0.15, density=0.5,
             clumping=0.2, nucleus_offset=0.3),
)


# HPA scale: nuclei fill >= 5 % of the 256-px crop of the HPA recipe.
_HPA_LINES = (
    CellLine("U2OS", nucleus_radius=44.0, nucleus_radius_cv=0.15, cell_ratio=2.4,
             elongation=1.6, nucleus_elongation=1.3, irregularity=0.22, density=0.5,
             clumping=0.1, nucleus_offset=0.35),
    CellLine("A-431", nucleus_radius=37.0, nucleus_radius_cv=0.12, cell_ratio=1.6,
             elongation=1.15, nucleus_elongation=1.1, irregularity=0.1, density=0.75,
             clumping=0.75, nucleus_offset=0.15),
    CellLine("U-251MG", nucleus_radius=41.0, nucleus_radius_cv=0.2, cell_ratio=2.6,
             elongation=2.1, nucleus_elongation=1.35, irregularity=0.35, density=0.45,
             clumping=0.15, nucleus_offset=0.4),
    CellLine("MCF7", nucleus_radius=39.0, nucleus_radius_cv=0.13, cell_ratio=1.7,
             elongation=1.2, nucleus_elongation=1.15, irregularity=0.12, density=0.7,
             clumping=0.6, nucleus_offset=0.2),
)

# Budding yeast strains: round-to-ovoid walled cells, small nuclei, little contact.
_YEAST_LINES = (
    CellLine("BY4741", nucleus_radius=4.2, nucleus_radius_cv=0.1, cell_ratio=3.0,
             elongation=1.15, nucleus_elongation=1.05, irregularity=0.03, density=0.35,
             clumping=0.3, nucleus_offset=0.5),
    CellLine("W303", nucleus_radius=4.8, nucleus_radius_cv=0.12, cell_ratio=3.1,
             elongation=1.3, nucleus_elongation=1.1, irregularity=0.04, density=0.3,
             clumping=0.5, nucleus_offset=0.6),
    CellLine("S288C", nucleus_radius=3.8, nucleus_radius_cv=0.1, cell_ratio=2.8,
             elongation=1.05, nucleus_elongation=1.05, irregularity=0.03, density=0.4,
             clumping=0.2, nucleus_offset=0.4),
)

# hiPSC lines of the Allen Cell collection style: tightly packed colonies, big nuclei.
_IPSC_LINES = (
    CellLine("WTC-11", nucleus_radius=11.0, nucleus_radius_cv=0.1, cell_ratio=1.45,
             elongation=1.15, nucleus_elongation=1.15, irregularity=0.1, density=0.95,
             clumping=0.9, nucleus_offset=0.1),
    CellLine("KOLF2.1J", nucleus_radius=12.5, nucleus_radius_cv=0.14, cell_ratio=1.6,
             elongation=1.35, nucleus_elongation=1.25, irregularity=0.18, density=0.85,
             clumping=0.8, nucleus_offset=0.2),
    CellLine("PGP1", nucleus_radius=10.0, nucleus_radius_cv=0.12, cell_ratio=1.75,
             elongation=1.6, nucleus_elongation=1.3, irregularity=0.25, density=0.75,
             clumping=0.7, nucleus_offset=0.25),
)

#: The β-VAE paper's five control "structures" (Donovan-Maiye et al. 2022).
ALLEN_CONTROLS = ("ctrl-blank", "ctrl-dna", "ctrl-membrane", "ctrl-noise", "ctrl-random")

PRESETS: dict[str, Preset] = {
    "opencell": Preset(
        name="opencell",
        # cytoself (Kobayashi 2021): the nuclear signed-distance channel beside the raw one.
        crops={"nucleus_distance": True},
        roles=ChannelRoles(protein="GFP", nucleus="Hoechst", markers=(), segment_on="Hoechst"),
        channels=("GFP", "Hoechst"),
        marker_patterns={"Hoechst": "dna"},
        cell_lines=_HUMAN_2D,
        field_size=512,
        crop_size=100,
        output_size=100,
        pixel_size_um=0.2,
        psf_sigma=1.1,
    ),
    "hpa": Preset(
        name="hpa",
        # PCI human (Lu 2019): marker channels clipped below 0.05 after min-max.
        crops={"clip_markers_below": 0.05},
        roles=ChannelRoles(protein="protein", nucleus="nucleus",
                           markers=("microtubules", "er"), segment_on="nucleus"),
        channels=("protein", "nucleus", "microtubules", "er"),
        marker_patterns={"nucleus": "dna", "microtubules": "microtubules", "er": "er"},
        cell_lines=_HPA_LINES,
        field_size=1024,
        crop_size=256,
        output_size=64,
        pixel_size_um=0.1,
        psf_sigma=1.6,
    ),
    "yeast": Preset(
        name="yeast",
        roles=ChannelRoles(protein="GFP", nucleus=None, markers=("RFP",), segment_on="RFP"),
        channels=("GFP", "RFP"),
        marker_patterns={"RFP": "cytosol_marker"},
        cell_lines=_YEAST_LINES,
        field_size=512,
        crop_size=64,
        output_size=64,
        pixel_size_um=0.13,
        psf_sigma=0.9,
    ),
    "allen3d": Preset(
        name="allen3d",
        roles=ChannelRoles(protein="structure", nucleus="DNA", markers=("membrane",),
                           segment_on="DNA"),
        channels=("membrane", "DNA", "structure"),
        marker_patterns={"membrane": "plasma_membrane", "DNA": "dna"},
        cell_lines=_IPSC_LINES,
        field_size=256,
        crop_size=64,
        output_size=64,
        pixel_size_um=0.317,
        psf_sigma=0.9,
        dims=3,
        size_z=24,
        psf_sigma_z=1.2,
        z_scale=0.6,
        controls=ALLEN_CONTROLS,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; the error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None
