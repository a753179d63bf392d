"""Derive the small committed snapshot from a full reference.

Gene universe: genes of CORUM complexes that have a GO cellular-component annotation,
plus the marker genes the demos use (:data:`MARKER_GENES`, those present in the source).
Kept for the universe: direct CC and BP annotations, the GO terms and edges of their
ancestor closure (so propagation inside the snapshot equals propagation in the full GO),
KEGG pathways, CORUM complex memberships, and CORUM/HuMAP/Reactome pairs with both genes
in the universe. MF annotations are left out: the simulator and benchmarks use CC and BP.

If the files exceed the size budget, BP annotations are trimmed step by step
(:data:`TRIM_RULES`); the rule applied is written to ``reference.json``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cellrep_ml.annotations.propagate import term_closure
from cellrep_ml.annotations.reference import Reference

__all__ = ["MARKER_GENES", "MAX_SNAPSHOT_BYTES", "TRIM_RULES", "make_snapshot", "write_snapshot"]

#: Organelle and structure markers used by the demos (``HIST1H2BK`` is the pre-2020 symbol
#: of ``H2BC12``; it is kept only if the source still knows it).
MARKER_GENES: tuple[str, ...] = (
    "SEC61B", "LMNB1", "FBL", "NPM1", "SRRM2", "SON", "H2BC21", "TOMM20", "GOLGA2", "RAB5A",
    "LAMP1", "PEX14", "PLIN2", "ACTB", "TUBB", "PCNT", "CTNNB1", "CDH1", "VIM", "CANX",
    "KDELR1", "CALR", "EEA1", "ATP5F1A", "HIST1H2BK",
)
#: Budget of the committed snapshot on disk.
MAX_SNAPSHOT_BYTES = 3_000_000
#: Trimming steps, mildest first: name -> description written to the provenance.
TRIM_RULES: dict[str, str] = {
    "none": "all direct CC and BP annotations of the universe",
    "bp_no_iea": "BP annotations with evidence IEA (electronic, unreviewed) dropped",
    "bp_markers_only": "BP annotations kept only for the marker genes",
}


def _trim_bp(annotations: pl.DataFrame, rule: str, markers: set[str]) -> pl.DataFrame:
    bp = pl.col("namespace") == "BP"
    if rule == "bp_no_iea":
        return annotations.filter(~(bp & (pl.col("evidence") == "IEA")))
    if rule == "bp_markers_only":
        return annotations.filter(~bp | pl.col("gene").is_in(list(markers)))
    return annotations


def make_snapshot(
    full: Reference, *, markers: tuple[str, ...] = MARKER_GENES, rule: str = "none"
) -> Reference:
    """Restrict ``full`` to the snapshot universe (see the module docstring).

    Parameters
    ----------
    full : Reference
        A full reference (:func:`.build_reference`).
    markers : tuple of str
        Extra genes kept besides the CORUM genes with CC annotations.
    rule : str
        A key of :data:`TRIM_RULES`.
    """
    if rule not in TRIM_RULES:
        raise ValueError(f"rule must be one of {list(TRIM_RULES)}, got {rule!r}")
    ann = full.gene_annotations
    cc_genes = set(ann.filter(pl.col("namespace") == "CC")["gene"].to_list())
    corum = set(full.complexes.filter(pl.col("source") == "CORUM")["gene"].to_list())
    known = set(ann["gene"].to_list()) | set(full.kegg["gene"].to_list())
    present_markers = {m for m in markers if m in known}
    universe = sorted((corum & cc_genes) | present_markers)
    keep = pl.col("gene").is_in(universe)

    annotations = ann.filter(keep & pl.col("namespace").is_in(["CC", "BP"]))
    annotations = _trim_bp(annotations, rule, present_markers)
    closure = term_closure(full.go_edges, terms=annotations["go_id"].unique().sort().to_list())
    terms = closure["ancestor"].unique().implode()
    # The closure is upward-closed, so every parent of a kept term is kept too.
    edges = full.go_edges.filter(pl.col("child").is_in(terms))
    pairs = full.gene_pairs.filter(pl.col("gene_a").is_in(universe) & pl.col("gene_b").is_in(universe))
    provenance = {
        **{k: v for k, v in full.provenance.items() if k not in ("counts", "built_at")},
        "kind": "snapshot",
        "derived_from_built_at": full.provenance.get("built_at"),
        "universe": "genes of CORUM complexes with a GO CC annotation, plus marker genes",
        "markers_kept": sorted(present_markers),
        "markers_missing": sorted(set(markers) - present_markers),
        "namespaces": ["CC", "BP"],
        "trim_rule": rule,
        "trim_rule_description": TRIM_RULES[rule],
    }
    return Reference(
        go_terms=full.go_terms.filter(pl.col("go_id").is_in(terms)),
        go_edges=edges,
        gene_annotations=annotations,
        kegg=full.kegg.filter(keep),
        complexes=full.complexes.filter(keep),
        gene_pairs=pairs,
        provenance=provenance,
    )


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def write_snapshot(
    full: Reference,
    out_dir: str | Path,
    *,
    markers: tuple[str, ...] = MARKER_GENES,
    max_bytes: int = MAX_SNAPSHOT_BYTES,
) -> Reference:
    """Write the mildest-trimmed snapshot of ``full`` that fits in ``max_bytes``.

    Returns
    -------
    Reference
        The snapshot written; ``provenance['trim_rule']`` says which rule was needed.

    Raises
    ------
    ValueError
        Even the strictest rule exceeds ``max_bytes``; the last attempt is left on disk.
    """
    out_dir = Path(out_dir)
    for rule in TRIM_RULES:
        snap = make_snapshot(full, markers=markers, rule=rule)
        snap.write(out_dir)
        size = _size(out_dir)
        if size <= max_bytes:
            return snap
    raise ValueError(
        f"{out_dir}: snapshot is {size} bytes with the strictest rule {rule!r}; "
        f"budget is {max_bytes} bytes"
    )
