"""Build the full reference from local copies of its sources.

Sources (see :mod:`.fetch` for how they are obtained):

* Bioconductor ``GO.db`` (``GO.sqlite``): GO terms and ``is_a``/``part_of`` edges —
  or, instead, a GO OBO file;
* Bioconductor ``org.Hs.eg.db`` (``org.Hs.eg.sqlite``): direct GO annotations of human
  gene symbols and KEGG pathways — a GAF file may replace the GO annotations;
* the ``efaar-benchmarking`` wheel: CORUM complexes and CORUM/HuMAP/Reactome gene pairs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from cellrep_ml.annotations.bioc import (
    read_go_sqlite,
    read_orgdb_annotations,
    read_orgdb_kegg,
    sqlite_metadata,
)
from cellrep_ml.annotations.efaar import read_complexes, read_gene_pairs, wheel_version
from cellrep_ml.annotations.gaf import read_gaf
from cellrep_ml.annotations.obo import read_obo
from cellrep_ml.annotations.reference import Reference
from cellrep_ml.errors import ReferenceDataError

__all__ = ["build_reference", "read_sources"]

# metadata keys of the Bioconductor databases worth recording
_META_KEYS = ("GOSOURCEDATE", "GOSOURCEURL", "EGSOURCEDATE", "KEGGSOURCEDATE", "ORGANISM")


def _r_package_version(sqlite: Path) -> str | None:
    """``Version:`` of the R package holding ``<pkg>/extdata/<db>.sqlite``, if its DESCRIPTION is there."""
    description = sqlite.resolve().parent.parent / "DESCRIPTION"
    if description.is_file():
        match = re.search(r"^Version:\s*(\S+)", description.read_text(encoding="utf-8"), re.M)
        if match:
            return match.group(1)
    return None


def _source(path: Path, version: str | None, **extra: str) -> dict:
    return {"file": path.name, "version": version, **extra}


def read_sources(
    *,
    go_sqlite: str | Path | None = None,
    orgdb_sqlite: str | Path,
    efaar_wheel: str | Path,
    go_obo: str | Path | None = None,
    gaf: str | Path | None = None,
) -> Reference:
    """Read every source into a :class:`Reference` without writing anything.

    Parameters
    ----------
    go_sqlite : str or Path, optional
        ``GO.db/extdata/GO.sqlite``; required unless ``go_obo`` is given.
    orgdb_sqlite : str or Path
        ``org.Hs.eg.db/extdata/org.Hs.eg.sqlite`` (KEGG, and GO annotations unless ``gaf``).
    efaar_wheel : str or Path
        ``efaar_benchmarking-1.0-*.whl``.
    go_obo : str or Path, optional
        A GO OBO file (plain or gzip) used *instead of* ``go_sqlite`` for terms and edges.
    gaf : str or Path, optional
        A GAF 2.x file (plain or gzip) used *instead of* the org.Hs.eg GO annotations.

    Returns
    -------
    Reference
        Annotations to terms absent from the GO terms (obsolete or newer than the
        ontology) are dropped; their number is recorded in the provenance.
    """
    orgdb_sqlite, efaar_wheel = Path(orgdb_sqlite), Path(efaar_wheel)
    sources: dict[str, dict] = {}
    if go_obo is not None:
        go_obo = Path(go_obo)
        terms, edges = read_obo(go_obo)
        terms = terms.filter(~pl.col("is_obsolete")).drop("is_obsolete")
        sources["go"] = _source(go_obo, None, format="obo")
    elif go_sqlite is not None:
        go_sqlite = Path(go_sqlite)
        terms, edges = read_go_sqlite(go_sqlite)
        meta = sqlite_metadata(go_sqlite)
        sources["go"] = _source(
            go_sqlite, _r_package_version(go_sqlite), package="GO.db",
            **{k: meta[k] for k in _META_KEYS if k in meta},
        )
    else:
        raise ReferenceDataError("no GO source: pass go_sqlite (GO.db) or go_obo (an OBO file)")

    meta = sqlite_metadata(orgdb_sqlite)
    sources["orgdb"] = _source(
        orgdb_sqlite, _r_package_version(orgdb_sqlite), package="org.Hs.eg.db",
        **{k: meta[k] for k in _META_KEYS if k in meta},
    )
    if gaf is not None:
        gaf = Path(gaf)
        annotations = read_gaf(gaf)
        sources["annotations"] = _source(gaf, None, format="gaf")
    else:
        annotations = read_orgdb_annotations(orgdb_sqlite)
    known = annotations["go_id"].is_in(terms["go_id"].implode())
    dropped = int((~known).sum())
    annotations = annotations.filter(known)
    # Edges to terms outside the term table would make ancestors without names.
    live = terms["go_id"].implode()
    edges = edges.filter(pl.col("child").is_in(live) & pl.col("parent").is_in(live))

    sources["efaar"] = _source(efaar_wheel, wheel_version(efaar_wheel), package="efaar-benchmarking")
    return Reference(
        go_terms=terms.sort("go_id"),
        go_edges=edges.sort("child", "parent", "relation"),
        gene_annotations=annotations.sort("gene", "go_id", "evidence"),
        kegg=read_orgdb_kegg(orgdb_sqlite).sort("gene", "pathway_id"),
        complexes=read_complexes(efaar_wheel),
        gene_pairs=read_gene_pairs(efaar_wheel).sort("source", "gene_a", "gene_b"),
        provenance={
            "kind": "full",
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": sources,
            "annotations_dropped_unknown_term": dropped,
        },
    )


def build_reference(
    out_dir: str | Path,
    *,
    go_sqlite: str | Path | None = None,
    orgdb_sqlite: str | Path,
    efaar_wheel: str | Path,
    go_obo: str | Path | None = None,
    gaf: str | Path | None = None,
) -> Reference:
    """Read the sources (see :func:`read_sources`) and write the reference to ``out_dir``.

    Returns
    -------
    Reference
        The tables written, with their provenance.
    """
    ref = read_sources(
        go_sqlite=go_sqlite, orgdb_sqlite=orgdb_sqlite, efaar_wheel=efaar_wheel,
        go_obo=go_obo, gaf=gaf,
    )
    ref.write(out_dir)
    return ref
