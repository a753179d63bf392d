"""Localization patterns, each drawn from a cell's geometry, and their GO CC terms.

Every pattern is a function ``render(ctx, sig, canvas, amp)`` that draws one cell's
share of a protein into a :class:`~cellrep_ml.simulate.canvas.Canvas2D`. ``amp`` is the
cell's amount of protein in that compartment (peak intensity, arbitrary units); ``sig``
is the protein's sub-pattern :class:`Signature` — shared by members of a protein
complex, so there is information below the compartment level (puncta size and density,
radial bias, texture scale).

:data:`PATTERN_GO` maps each localization pattern to the GO cellular-component terms
that select it; :data:`PATTERNS` holds the renderers. Reference-channel stains (DNA,
cytosolic marker) are in :data:`STAINS`; they are not localization classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from cellrep_ml.simulate.canvas import Canvas2D
from cellrep_ml.simulate.cellctx import CellContext
from cellrep_ml.simulate.textures import ridges, sample_pixels

__all__ = ["NUCLEAR_PATTERNS", "PATTERNS", "PATTERN_GO", "STAINS", "Signature", "render_pattern"]


@dataclass(frozen=True)
class Signature:
    """Finer sub-pattern parameters of a protein (shared within a protein complex).

    Parameters
    ----------
    puncta_size : float
        Multiplier of spot and droplet sizes (1 = typical).
    puncta_density : float
        Multiplier of the number of spots per cell.
    radial_bias : float
        In [-1, 1]: > 0 pushes signal towards the cell (or nucleus) periphery, < 0 inwards.
    texture_scale : float
        Multiplier of the correlation length of networks and textures.
    """

    puncta_size: float = 1.0
    puncta_density: float = 1.0
    radial_bias: float = 0.0
    texture_scale: float = 1.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Signature:
        """A random signature; the spreads make complexes distinguishable by eye."""
        return cls(
            puncta_size=float(np.exp(rng.uniform(np.log(0.65), np.log(1.6)))),
            puncta_density=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
            radial_bias=float(rng.uniform(-1.0, 1.0)),
            texture_scale=float(np.exp(rng.uniform(np.log(0.6), np.log(1.8)))),
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


Renderer = Callable[[CellContext, Signature, Canvas2D, float], None]

#: Localization pattern → GO cellular-component ids that select it (propagated sets).
PATTERN_GO: dict[str, tuple[str, ...]] = {
    "nucleoplasm": ("GO:0005654",),
    "nucleolus": ("GO:0005730",),
    "nuclear_speckles": ("GO:0016607",),
    "nuclear_envelope": ("GO:0005635",),
    "chromatin": ("GO:0000785", "GO:0005694"),
    "cytosol": ("GO:0005829",),
    "er": ("GO:0005783",),
    "golgi": ("GO:0005794",),
    "mitochondria": ("GO:0005739",),
    "endosomes": ("GO:0005768",),
    "lysosomes": ("GO:0005764",),
    "peroxisomes": ("GO:0005777",),
    "lipid_droplets": ("GO:0005811",),
    "plasma_membrane": ("GO:0005886",),
    "actin": ("GO:0015629",),
    "microtubules": ("GO:0005874", "GO:0015630"),
    "centrosome": ("GO:0005813",),
    "cell_junctions": ("GO:0005911",),
}

#: Patterns drawn inside the nucleus.
NUCLEAR_PATTERNS = frozenset({"nucleoplasm", "nucleolus", "nuclear_speckles", "chromatin"})


def _radial(x: np.ndarray, bias: float) -> np.ndarray:
    """Weight exp(2 bias (x - 1/2)) over a radial coordinate x in [0, 1]."""
    return np.exp(np.float32(2.0 * bias) * (np.clip(x, 0.0, 1.0) - np.float32(0.5)))


def _n_spots(ctx: CellContext, per_100px: float, sig: Signature, area: int) -> int:
    """Spot count ∝ area × density, Poisson-scattered between cells."""
    lam = per_100px * sig.puncta_density * area / 100.0
    return int(ctx.rng.poisson(max(lam, 0.5)))


def _spots(ctx: CellContext, canvas: Canvas2D, weights: np.ndarray, n: int, sigma: float,
           amp: float, region: str, spread: float = 0.3) -> None:
    ys, xs = sample_pixels(ctx.rng, weights, n)
    amps = amp * ctx.rng.lognormal(0.0, spread, len(ys))
    canvas.add_points(ctx, ys, xs, amps, sigma, region)


# ------------------------------------------------------------------ nuclear
def _nucleoplasm(ctx, sig, canvas, amp):
    tex = 1.0 + 0.1 * ctx.noise(2.0 * sig.texture_scale)
    img = ctx.nm * tex * (1.0 - 0.85 * ctx.nucleolus_map) * _radial(ctx.d_nuc, sig.radial_bias)
    canvas.add(ctx, (0.7 * amp) * img, "nucleus")


def _nucleolus(ctx, sig, canvas, amp):
    tex = 1.0 + 0.3 * ctx.noise(1.5 * sig.texture_scale)
    # Fibrillar centres: a few bright dots inside each nucleolus on top of the fill.
    canvas.add(ctx, amp * ctx.nucleolus_map * tex, "nucleus")
    n = _n_spots(ctx, 6.0, sig, int((ctx.nucleolus_map > 0.5).sum()))
    _spots(ctx, canvas, ctx.nucleolus_map**4, n, 0.7 * sig.puncta_size, 0.8 * amp, "nucleus")


def _speckles(ctx, sig, canvas, amp):
    area = int(ctx.nm.sum())
    n = _n_spots(ctx, 4.0, sig, area)
    w = ctx.nm * (1.0 - ctx.nucleolus_map) * _radial(ctx.d_nuc, sig.radial_bias)
    _spots(ctx, canvas, w, n, 1.3 * sig.puncta_size * np.sqrt(ctx.r_nuc / 12), amp, "nucleus")
    canvas.add(ctx, (0.12 * amp) * ctx.nm, "nucleus")


def _envelope(ctx, sig, canvas, amp):
    z = (ctx.d_nuc - 1.0) * np.float32(ctx.r_nuc / (0.9 * sig.puncta_size))
    rim = np.exp(-z * z) * ctx.cm * (1.0 + 0.3 * ctx.noise(2.5 * sig.texture_scale))
    canvas.add(ctx, amp * rim, "envelope")


def _chromatin(ctx, sig, canvas, amp):
    # Follows the DNA, with more contrast and the heterochromatin rim at the periphery.
    rim = 1.0 + 0.8 * np.clip(ctx.d_nuc, 0, 1) ** 4
    img = ctx.chromatin**2 * rim * _radial(ctx.d_nuc, 0.5 * sig.radial_bias)
    canvas.add(ctx, (0.7 * amp) * img, "nucleus")


# --------------------------------------------------------------- cytoplasmic
def _cytosol(ctx, sig, canvas, amp):
    tex = 1.0 + 0.12 * ctx.noise(4.0 * sig.texture_scale)
    img = (ctx.cyto * _radial(ctx.t, 0.5 * sig.radial_bias) + 0.15 * ctx.nm) * tex
    canvas.add(ctx, (0.6 * amp) * img, "cell")


def _er(ctx, sig, canvas, amp):
    net = ridges(ctx.noise(4.0 * sig.texture_scale), 0.3)
    perinuclear = 0.35 + np.exp(-2.5 * ctx.t)
    img = ctx.cyto * (0.25 + net) * perinuclear * _radial(ctx.t, sig.radial_bias)
    canvas.add(ctx, (0.7 * amp) * img, "cyto")
    # The ER is continuous with the nuclear envelope.
    z = (ctx.d_nuc - 1.0) * np.float32(ctx.r_nuc)
    canvas.add(ctx, (0.5 * amp) * np.exp(-z * z) * ctx.cm, "envelope")


def _golgi(ctx, sig, canvas, amp):
    n = max(3, int(ctx.rng.poisson(14 * sig.puncta_density)))
    ang = ctx.polarity + ctx.rng.normal(0, 0.4, n)
    dist = ctx.r_nuc * 1.05 + 1.0 + np.abs(ctx.rng.normal(0, 0.25 * ctx.r_nuc * sig.puncta_size, n))
    ys = -float(ctx.dy[0, 0]) + dist * np.sin(ang)
    xs = -float(ctx.dx[0, 0]) + dist * np.cos(ang)
    iy = np.clip(np.rint(ys).astype(int), 0, ctx.shape[0] - 1)
    ix = np.clip(np.rint(xs).astype(int), 0, ctx.shape[1] - 1)
    keep = ctx.cyto[iy, ix]
    canvas.add_points(ctx, ys[keep], xs[keep], amp * ctx.rng.lognormal(0, 0.3, int(keep.sum())),
                      1.3 * sig.puncta_size, "cyto")
    canvas.add(ctx, (0.05 * amp) * ctx.cyto, "cyto")


def _mitochondria(ctx, sig, canvas, amp):
    net = ridges(ctx.noise(3.0 * sig.texture_scale), 0.35)
    frag = ctx.noise(7.0 * sig.texture_scale) > -0.3
    img = ctx.cyto * net * frag * (0.6 + 0.8 * np.exp(-2.0 * ctx.t)) * _radial(ctx.t, sig.radial_bias)
    canvas.add(ctx, (0.9 * amp) * img, "cyto")


def _cyto_spots(per_100px: float, sigma: float, perinuclear: float):
    def render(ctx, sig, canvas, amp):
        w = ctx.cyto * _radial(ctx.t, sig.radial_bias)
        if perinuclear:
            w = w * np.exp(-perinuclear * ctx.t)
        n = _n_spots(ctx, per_100px, sig, ctx.cyto_area)
        _spots(ctx, canvas, w, n, sigma * sig.puncta_size, amp, "cyto")
        canvas.add(ctx, (0.04 * amp) * ctx.cyto, "cyto")
    return render


def _lipid_droplets(ctx, sig, canvas, amp):
    k = max(2, int(ctx.rng.poisson(6 * sig.puncta_density)))
    ys, xs = sample_pixels(ctx.rng, ctx.cyto * (ctx.edt > 3), k)
    img = np.zeros(ctx.shape, dtype=np.float32)
    yy = np.arange(ctx.shape[0], dtype=np.float32)[:, None]
    xx = np.arange(ctx.shape[1], dtype=np.float32)[None, :]
    for y, x in zip(ys, xs, strict=True):
        r = float(ctx.rng.uniform(1.6, 3.0) * sig.puncta_size)
        w = int(r + 3)
        sy = slice(max(int(y) - w, 0), min(int(y) + w + 1, ctx.shape[0]))
        sx = slice(max(int(x) - w, 0), min(int(x) + w + 1, ctx.shape[1]))
        d = np.sqrt((yy[sy] - y) ** 2 + (xx[:, sx] - x) ** 2) - np.float32(r)
        # Droplets are rings: the coat protein sits on the surface of a neutral-lipid core.
        np.maximum(img[sy, sx], np.exp(-(d / np.float32(0.8)) ** 2), out=img[sy, sx])
    canvas.add(ctx, amp * img * ctx.cyto, "cyto")


# ------------------------------------------------------------ cell periphery
def _plasma_membrane(ctx, sig, canvas, amp):
    z = (ctx.edt - 1.0) / np.float32(1.2 * sig.puncta_size)
    band = np.exp(-z * z) * ctx.cm * (1.0 + 0.2 * ctx.noise(3.0 * sig.texture_scale))
    canvas.add(ctx, amp * band, "membrane")


def _actin(ctx, sig, canvas, amp):
    z = (ctx.edt - 1.0) / np.float32(0.9)
    img = 0.6 * np.exp(-z * z)
    angle = float(ctx.geom.cell_angle[ctx.index]) + float(ctx.rng.normal(0, 0.2))
    ny, nx = np.cos(angle), -np.sin(angle)  # unit normal of the fibres (y, x)
    k = max(2, int(ctx.rng.poisson(6 * sig.puncta_density)))
    half = 0.8 * float(ctx.edt.max())
    offsets = ctx.rng.uniform(-half, half, k)
    # Signed distance of each pixel across the fibre direction, from the nucleus centre.
    across = ctx.dy * np.float32(ny) + ctx.dx * np.float32(nx)
    for off, tilt in zip(offsets, ctx.rng.normal(0, 0.05, k), strict=True):
        d = across - np.float32(off) + np.float32(tilt) * (ctx.dx * np.float32(ny) - ctx.dy * np.float32(nx))
        np.maximum(img, 0.8 * np.exp(-(d / np.float32(0.7 * sig.texture_scale)) ** 2), out=img)
    canvas.add(ctx, amp * img * ctx.cm * (ctx.edt > 0.5), "cell")


def _aster(ctx: CellContext, sig: Signature) -> np.ndarray:
    """Radial microtubule filaments from the centrosome, about 1 px wide at any radius."""
    cy, cx = ctx.centrosome
    yy = np.arange(ctx.shape[0], dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(ctx.shape[1], dtype=np.float32)[None, :] - np.float32(cx)
    r = np.sqrt(yy * yy + xx * xx)
    phi = np.arctan2(yy, xx)
    # Gentle bending: the angle wanders a little with position.
    phi = phi + np.float32(0.12) * ctx.noise(8.0 * sig.texture_scale) * np.minimum(r / 10, 1)
    n = max(12, int(ctx.rng.poisson(36 * sig.puncta_density)))
    spokes = np.sort(ctx.rng.uniform(-np.pi, np.pi, n))
    # Angular distance to the nearest spoke, through a 2048-bin lookup table.
    bins = 2048
    grid = np.linspace(-np.pi, np.pi, bins, endpoint=False)
    diff = _nearest_angle(grid, spokes)
    idx = ((phi + np.pi) * (bins / (2 * np.pi))).astype(np.int64) % bins
    perp = r * diff.astype(np.float32)[idx]
    lines = np.exp(-(perp / np.float32(0.8)) ** 2)
    return lines * (1.0 - 0.4 * np.clip(ctx.t, 0, 1)) * (ctx.cyto + 0.3 * ctx.nm)


def _nearest_angle(grid: np.ndarray, spokes: np.ndarray) -> np.ndarray:
    """Circular distance from each ``grid`` angle to the nearest of the sorted ``spokes``.

    Only the two circular neighbours of an angle among the sorted spokes can be nearest,
    so the distance is evaluated for those two instead of every spoke (the all-pairs
    table cost more than drawing a small yeast cell); the formula per pair is unchanged.
    """
    j = np.searchsorted(spokes, grid)
    n = len(spokes)

    def dist(s: np.ndarray) -> np.ndarray:
        return np.abs(((grid - s) + np.pi) % (2 * np.pi) - np.pi)

    return np.minimum(dist(spokes[(j - 1) % n]), dist(spokes[j % n]))


def _microtubules(ctx, sig, canvas, amp):
    canvas.add(ctx, (0.8 * amp) * _aster(ctx, sig), "cell")
    cy, cx = ctx.centrosome
    canvas.add_points(ctx, np.array([cy]), np.array([cx]), 1.2 * amp, 1.5, "cyto")


def _centrosome(ctx, sig, canvas, amp):
    cy, cx = ctx.centrosome
    # Two centrioles ~1 px apart, plus a faint cytosolic pool.
    off = ctx.rng.normal(0, 0.8, (2, 2))
    canvas.add_points(ctx, cy + off[:, 0], cx + off[:, 1], 2.0 * amp, 0.9 * sig.puncta_size, "cyto")
    canvas.add(ctx, (0.04 * amp) * ctx.cyto, "cyto")


def _junctions(ctx, sig, canvas, amp):
    z = (ctx.edt - 1.0) / np.float32(1.0)
    rim = np.exp(-z * z) * ctx.cm
    band = ctx.junction * (1.0 + 0.3 * ctx.noise(2.0 * sig.texture_scale))
    canvas.add(ctx, amp * (band * rim + 0.12 * rim), "membrane")


# ------------------------------------------------------------------- stains
def _dna(ctx, sig, canvas, amp):
    canvas.add(ctx, amp * ctx.chromatin, "nucleus")


def _cytosol_marker(ctx, sig, canvas, amp):
    canvas.add(ctx, amp * (ctx.cyto + 0.7 * ctx.nm), "cell")


PATTERNS: dict[str, Renderer] = {
    "nucleoplasm": _nucleoplasm,
    "nucleolus": _nucleolus,
    "nuclear_speckles": _speckles,
    "nuclear_envelope": _envelope,
    "chromatin": _chromatin,
    "cytosol": _cytosol,
    "er": _er,
    "golgi": _golgi,
    "mitochondria": _mitochondria,
    "endosomes": _cyto_spots(per_100px=4.0, sigma=0.9, perinuclear=0.0),
    "lysosomes": _cyto_spots(per_100px=1.2, sigma=1.6, perinuclear=2.0),
    "peroxisomes": _cyto_spots(per_100px=5.0, sigma=0.6, perinuclear=0.0),
    "lipid_droplets": _lipid_droplets,
    "plasma_membrane": _plasma_membrane,
    "actin": _actin,
    "microtubules": _microtubules,
    "centrosome": _centrosome,
    "cell_junctions": _junctions,
}

#: Reference-channel stains (not localization classes).
STAINS: dict[str, Renderer] = {"dna": _dna, "cytosol_marker": _cytosol_marker}

if set(PATTERNS) != set(PATTERN_GO):  # pragma: no cover - guards edits of the two tables
    raise RuntimeError("PATTERNS and PATTERN_GO must name the same patterns")


def render_pattern(name: str, ctx: CellContext, sig: Signature, canvas: Canvas2D,
                   amp: float) -> None:
    """Draw pattern (or stain) ``name`` for one cell; ``amp`` = peak intensity."""
    fn = PATTERNS.get(name) or STAINS.get(name)
    if fn is None:
        raise ValueError(f"unknown pattern {name!r}; expected one of "
                         f"{sorted(PATTERNS) + sorted(STAINS)}")
    if amp > 0:
        fn(ctx, sig, canvas, amp)
