"""Synthetic screens with ground truth: the demo's data and the test bed of every model.

>>> from cellrep_ml.simulate import simulate_screen
>>> result = simulate_screen("opencell", "screens/demo", n_proteins=24, n_cell_lines=3,
...                          fields_per_protein=4, seed=0)          # doctest: +SKIP

Modules: ``presets`` (channels, optics, cell lines), ``geometry`` (nuclei and cells),
``patterns`` (localization patterns and their GO terms), ``catalog`` (real genes and
complexes), ``nuisance`` (plate, illumination, focus, camera), ``render`` (one field in
memory), ``writer`` (OME-TIFF) and ``screen`` (the whole screen on disk).
"""

from cellrep_ml.simulate.catalog import (
    CONTROL_KINDS,
    MARKERS,
    ProteinSpec,
    build_catalog,
    catalog_frame,
    gene_compartments,
    localization_labels,
    make_controls,
)
from cellrep_ml.simulate.geometry import FieldGeometry, grow_cells
from cellrep_ml.simulate.nuisance import FieldNuisance, PlateNuisance, draw_field, draw_plate
from cellrep_ml.simulate.patterns import NUCLEAR_PATTERNS, PATTERN_GO, PATTERNS, Signature
from cellrep_ml.simulate.presets import PRESETS, CellLine, Preset, get_preset
from cellrep_ml.simulate.render import RenderedField, render_field
from cellrep_ml.simulate.screen import (
    CELLS_SCHEMA,
    SimulationResult,
    read_manifest,
    simulate_screen,
)

__all__ = [
    "CELLS_SCHEMA",
    "CONTROL_KINDS",
    "MARKERS",
    "NUCLEAR_PATTERNS",
    "PATTERNS",
    "PATTERN_GO",
    "PRESETS",
    "CellLine",
    "FieldGeometry",
    "FieldNuisance",
    "PlateNuisance",
    "Preset",
    "ProteinSpec",
    "RenderedField",
    "Signature",
    "SimulationResult",
    "build_catalog",
    "catalog_frame",
    "draw_field",
    "draw_plate",
    "gene_compartments",
    "get_preset",
    "grow_cells",
    "localization_labels",
    "make_controls",
    "read_manifest",
    "render_field",
    "simulate_screen",
]
