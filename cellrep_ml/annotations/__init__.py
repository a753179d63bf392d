"""Reference annotations: the GO DAG, gene annotations, KEGG, complexes and gene pairs.

>>> from cellrep_ml.annotations import load_reference
>>> ref = load_reference()                      # full build if present, else the snapshot
>>> "GO:0005783" in ref.cc_terms("SEC61B")      # endoplasmic reticulum, by propagation
True
"""

from cellrep_ml.annotations.bioc import (
    read_go_sqlite,
    read_orgdb_annotations,
    read_orgdb_kegg,
    sqlite_metadata,
)
from cellrep_ml.annotations.build import build_reference, read_sources
from cellrep_ml.annotations.efaar import read_complexes, read_gene_pairs, wheel_version
from cellrep_ml.annotations.fetch import Sources, fetch_sources
from cellrep_ml.annotations.gaf import read_gaf
from cellrep_ml.annotations.obo import read_obo
from cellrep_ml.annotations.propagate import PROPAGATED, ancestors, propagate, term_closure
from cellrep_ml.annotations.reference import Reference, load_reference, snapshot_dir
from cellrep_ml.annotations.schema import NAMESPACES, RELATIONS, SCHEMAS
from cellrep_ml.annotations.snapshot import MARKER_GENES, make_snapshot, write_snapshot

__all__ = [
    "MARKER_GENES",
    "NAMESPACES",
    "PROPAGATED",
    "RELATIONS",
    "SCHEMAS",
    "Reference",
    "Sources",
    "ancestors",
    "build_reference",
    "fetch_sources",
    "load_reference",
    "make_snapshot",
    "propagate",
    "read_complexes",
    "read_gaf",
    "read_gene_pairs",
    "read_go_sqlite",
    "read_obo",
    "read_orgdb_annotations",
    "read_orgdb_kegg",
    "read_sources",
    "snapshot_dir",
    "sqlite_metadata",
    "term_closure",
    "wheel_version",
    "write_snapshot",
]
