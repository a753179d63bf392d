"""Patterns render where they should, cell lines differ, the catalog follows GO and CORUM."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import ndimage as ndi

from cellrep_ml.simulate import (
    NUCLEAR_PATTERNS,
    PATTERN_GO,
    PATTERNS,
    PRESETS,
    ProteinSpec,
    Signature,
    build_catalog,
    catalog_frame,
    grow_cells,
    render_field,
)
from cellrep_ml.simulate.canvas import Canvas2D
from cellrep_ml.simulate.cellctx import CellContext
from cellrep_ml.simulate.patterns import render_pattern


def _one(pattern: str) -> ProteinSpec:
    return ProteinSpec(name=pattern.upper(), compartments=(pattern,), weights=(1.0,))


@pytest.fixture(scope="module")
def field_geometry():
    line = PRESETS["opencell"].cell_line("HeLa")
    geom = grow_cells(np.random.default_rng(3), line, 192)
    boxes = ndi.find_objects(geom.cells, max_label=geom.n_cells)
    return geom, boxes


def _draw(pattern, geom, boxes):
    """Noise- and blur-free drawing of one pattern in every cell of the field."""
    canvas = Canvas2D(geom.cells.shape)
    for i, box in enumerate(boxes):
        if box is not None:
            render_pattern(pattern, CellContext(geom, i, box, seed=i), Signature(), canvas, 1.0)
    return canvas.render(0.0)


def _profile(img, geom):
    """Mean intensity in nucleus, cytoplasm, the 2-px rim of each cell, and outside cells."""
    cells, nuclei = geom.cells, geom.nuclei
    edge = ndi.grey_dilation(cells, size=3) != ndi.grey_erosion(cells, size=3)
    dist = ndi.distance_transform_edt(~edge)
    rim = (cells > 0) & (dist <= 2)
    cyto = (cells > 0) & (dist > 4) & ~ndi.binary_dilation(nuclei > 0, iterations=2)
    nuc = img[nuclei > 0]
    return {"nucleus": nuc.mean(), "cyto": img[cyto].mean(), "rim": img[rim].mean(),
            "outside": img[cells == 0].mean(), "nuclear_cv": nuc.std() / (nuc.mean() + 1e-9)}


def test_at_least_fifteen_patterns_each_mapped_to_go():
    assert len(PATTERNS) >= 15
    assert set(PATTERNS) == set(PATTERN_GO)
    assert all(ids and all(i.startswith("GO:") for i in ids) for ids in PATTERN_GO.values())


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_pattern_renders_inside_its_cells(pattern, field_geometry):
    geom, boxes = field_geometry
    img = _draw(pattern, geom, boxes)
    inside = img[geom.cells > 0]
    assert inside.sum() > 0
    # Without the PSF only spots on the very edge spill out of the cells.
    assert img[geom.cells == 0].sum() < 0.03 * img.sum()
    prof = _profile(img, geom)
    if pattern in NUCLEAR_PATTERNS:
        assert prof["nucleus"] > 5 * prof["cyto"], prof
    elif pattern in ("plasma_membrane", "cell_junctions"):
        assert prof["rim"] > 3 * prof["cyto"], prof
        assert prof["rim"] > 3 * prof["nucleus"], prof
    elif pattern == "actin":  # cortex + stress fibres that also run under the nucleus
        assert prof["rim"] > 2 * prof["cyto"], prof
    elif pattern != "nuclear_envelope":
        assert prof["cyto"] > prof["nucleus"], prof


def test_envelope_is_a_rim_around_the_nucleus(field_geometry):
    geom, boxes = field_geometry
    img = _draw("nuclear_envelope", geom, boxes)
    nuc = geom.nuclei > 0
    shell = nuc & ~ndi.binary_erosion(nuc, iterations=2)
    core = ndi.binary_erosion(nuc, iterations=4)
    assert img[shell].mean() > 4 * img[core].mean()


def test_patterns_are_distinguishable(field_geometry):
    geom, boxes = field_geometry
    # Per-cell profiles (nucleus, cyto, rim fractions + texture) differ between patterns.
    feats = {}
    for pattern in sorted(PATTERNS):
        img = _draw(pattern, geom, boxes)
        prof = _profile(img, geom)
        total = prof["nucleus"] + prof["cyto"] + prof["rim"] + 1e-9
        inside = img[geom.cells > 0]
        feats[pattern] = np.array([prof["nucleus"] / total, prof["cyto"] / total,
                                   prof["rim"] / total, inside.std() / (inside.mean() + 1e-9),
                                   prof["nuclear_cv"]])
    names = sorted(feats)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert np.abs(feats[names[a]] - feats[names[b]]).max() > 0.02, (names[a], names[b])


def test_nucleus_masks_match_the_dna_channel():
    field = render_field("opencell", "HeLa", _one("cytosol"), seed=5, field_size=192)
    dna = field.channel("Hoechst").astype(float)
    nuc = field.nuclei > 0
    core = ndi.binary_erosion(nuc, iterations=2)
    far = ndi.binary_dilation(nuc, iterations=4)
    assert core.any()
    assert np.median(dna[core]) > 3 * np.median(dna[~far])
    # Otsu on the stain recovers the truth masks closely.
    from skimage.filters import threshold_otsu
    seg = ndi.gaussian_filter(dna, 1.0) > threshold_otsu(ndi.gaussian_filter(dna, 1.0))
    iou = (seg & nuc).sum() / (seg | nuc).sum()
    assert iou > 0.75


@pytest.mark.parametrize(("preset", "size"), [("opencell", 256), ("hpa", 640), ("yeast", 192),
                                              ("allen3d", 192)])
def test_cell_lines_differ_in_morphology(preset, size):
    stats = {}
    for line in PRESETS[preset].cell_lines[:3]:
        nuc, cell, count = [], [], []
        for s in range(2):
            g = grow_cells(np.random.default_rng(s), line, size)
            a_n = np.bincount(g.nuclei.ravel())[1:]
            a_c = np.bincount(g.cells.ravel())[1:]
            nuc.extend(a_n[a_n > 0])
            cell.extend(a_c[a_c > 0])
            count.append(g.n_cells)
        stats[line.name] = (np.mean(nuc), np.mean(cell), np.mean(cell) / np.mean(nuc))
    names = list(stats)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            sa, sb = stats[names[a]], stats[names[b]]
            rel = np.abs(np.array(sa) - np.array(sb)) / np.maximum(sa, sb)
            assert rel.max() > 0.15, (names[a], names[b], sa, sb)


def test_nuclei_never_touch():
    line = PRESETS["opencell"].cell_line("HEK293T")  # the most clumped line
    g = grow_cells(np.random.default_rng(0), line, 256)
    grown = ndi.grey_dilation(g.nuclei, size=3)
    touching = (g.nuclei > 0) & (grown != g.nuclei) & (ndi.grey_erosion(
        np.where(g.nuclei > 0, g.nuclei, 10**6), size=3) != g.nuclei)
    assert not touching.any()
    # Every nucleus lies in its own cell.
    assert np.all(g.cells[g.nuclei > 0] == g.nuclei[g.nuclei > 0])


class _TinyReference:
    """A hand-made stand-in for cellrep_ml.annotations.Reference."""

    def __init__(self):
        self.go_edges = pl.DataFrame({
            "child": ["GO:0016607", "GO:0005654", "GO:0005730", "GO:0005783", "GO:0005739",
                      "GO:0005764", "GO:0005829"],
            "parent": ["GO:0005654", "GO:0005634", "GO:0005634", "GO:0005737", "GO:0005737",
                       "GO:0005737", "GO:0005737"],
            "relation": ["part_of", "part_of", "part_of", "part_of", "part_of", "part_of",
                         "part_of"],
        })
        ann = {
            "SRSF1": {"GO:0016607", "GO:0005654"}, "SRSF2": {"GO:0016607"},
            "SRSF3": {"GO:0016607"}, "FBL": {"GO:0005730", "GO:0005654"},
            "NOP56": {"GO:0005730"}, "SEC61B": {"GO:0005783"}, "SEC61A1": {"GO:0005783"},
            "TOMM20": {"GO:0005739", "GO:0005829"}, "TOMM40": {"GO:0005739"},
            "LAMP1": {"GO:0005764"}, "GAPDH": {"GO:0005829"}, "PKM": {"GO:0005829"},
            "NOGO": {"GO:0009999"},
        }
        self._cc = {}
        for g, terms in ann.items():
            closed = set(terms)
            for t in terms:
                closed |= set(self.go_edges.filter(pl.col("child") == t)["parent"])
            self._cc[g] = closed
        self.complexes = pl.DataFrame({
            "source": ["CORUM"] * 5, "complex_id": [10, 10, 20, 20, 20],
            "complex_name": ["SRSF", "SRSF", "TOM", "TOM", "TOM"],
            "gene": ["SRSF1", "SRSF2", "TOMM20", "TOMM40", "SEC61B"],
        })

    def cc_terms(self, gene, propagated=True):
        return set(self._cc.get(gene, ()))

    def genes_with_cc(self):
        return sorted(self._cc)


def test_catalog_follows_go_and_complexes():
    ref = _TinyReference()
    cat = {p.name: p for p in build_catalog(ref, 12, seed=0)}
    assert "NOGO" not in cat  # maps to no pattern
    # Speckle wins over its ancestor nucleoplasm.
    assert cat["SRSF1"].compartments == ("nuclear_speckles",)
    assert cat["FBL"].compartments[0] == "nucleolus"
    assert set(cat["TOMM20"].compartments) == {"mitochondria", "cytosol"}
    assert cat["TOMM20"].compartments[0] == "mitochondria"  # rarer = more specific first
    for p in cat.values():
        assert abs(sum(p.weights) - 1) < 1e-9 and len(p.compartments) <= 3
    # Complex members share their signature; different complexes do not.
    assert cat["SRSF1"].signature == cat["SRSF2"].signature
    assert cat["TOMM20"].signature == cat["TOMM40"].signature == cat["SEC61B"].signature
    assert cat["SRSF1"].signature != cat["TOMM20"].signature
    assert cat["GAPDH"].complex_id is None


def test_catalog_is_balanced_and_deterministic():
    ref = _TinyReference()
    a = build_catalog(ref, 5, seed=1)
    assert [p.name for p in a] == [p.name for p in build_catalog(ref, 5, seed=1)]
    # Round-robin: the first picks come from different primary compartments.
    firsts = [p.compartments[0] for p in build_catalog(ref, 6, seed=1, partners=0)]
    assert len(set(firsts)) == 6
    assert any(p.name == "SEC61B" for p in build_catalog(ref, 6, seed=2, partners=0))
    frame = catalog_frame(a)
    assert frame["protein"].to_list() == [p.name for p in a]
    assert frame.schema["compartments"] == pl.List(pl.Utf8)


def test_catalog_from_the_committed_reference():
    from cellrep_ml.annotations import load_reference

    cat = build_catalog(load_reference(), 40, seed=0)
    assert len(cat) == 40
    primaries = {p.compartments[0] for p in cat}
    assert len(primaries) >= 12
    by_complex = {}
    for p in cat:
        if p.complex_id is not None:
            by_complex.setdefault(p.complex_id, set()).add(p.signature)
    assert any(len(v) == 1 for v in by_complex.values())
    assert all(len(v) == 1 for v in by_complex.values())


def test_nearest_angle_matches_all_pairs():
    """The aster's lookup table checks only the two neighbouring spokes; it must equal the
    all-pairs minimum exactly (so simulated pixels do not change), duplicates included."""
    from cellrep_ml.simulate.patterns import _nearest_angle

    grid = np.linspace(-np.pi, np.pi, 2048, endpoint=False)
    rng = np.random.default_rng(0)
    for n in (1, 2, 12, 36, 90):
        spokes = np.sort(np.r_[rng.uniform(-np.pi, np.pi, n), grid[7], -np.pi])
        spokes = np.sort(np.r_[spokes, spokes[:1]])  # a duplicate spoke
        want = np.abs(((grid[:, None] - spokes[None, :]) + np.pi) % (2 * np.pi) - np.pi).min(1)
        np.testing.assert_array_equal(_nearest_angle(grid, spokes), want)
