"""Readers for the Bioconductor annotation SQLite databases (``GO.db``, ``org.Hs.eg.db``).

Both packages ship one SQLite file under ``extdata/``. Layout used here:

``GO.sqlite``
    ``go_term(_id, go_id, term, ontology)`` and ``go_{cc,bp,mf}_parents(_id, _parent_id,
    relationship_type)`` where the type is spelled ``'isa'``, ``'part of'``, ``'regulates'``...
``org.Hs.eg.sqlite``
    ``gene_info(_id, symbol)``, ``go_{cc,bp,mf}(_id, go_id, evidence)`` (direct annotations;
    the ``*_all`` tables hold the propagated ones and are not read) and ``kegg(_id, path_id)``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl

from cellrep_ml.annotations.schema import NAMESPACES, SCHEMAS, validate
from cellrep_ml.errors import ReferenceDataError

__all__ = ["read_go_sqlite", "read_orgdb_annotations", "read_orgdb_kegg", "sqlite_metadata"]

# GO.db relationship_type -> our relation name; the regulates family is not transitive
# over annotations and is left out.
_RELATION = {"isa": "is_a", "part of": "part_of"}


def _connect(path: str | Path, tables: tuple[str, ...]) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise ReferenceDataError(f"{path}: SQLite database not found")
    # Read-only URI: the source files live in package directories we must not touch.
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        con.close()
        raise ReferenceDataError(f"{path}: not a readable SQLite database ({exc})") from exc
    missing = [t for t in tables if t not in present]
    if missing:
        con.close()
        raise ReferenceDataError(
            f"{path}: missing tables {missing}; expected the Bioconductor layout with {list(tables)}"
        )
    return con


def _frame(con: sqlite3.Connection, sql: str, schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame(con.execute(sql).fetchall(), schema=schema, orient="row")


def sqlite_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata`` table of a Bioconductor SQLite file (source names, dates, URLs)."""
    con = _connect(path, ("metadata",))
    try:
        return {str(k): str(v) for k, v in con.execute("SELECT name, value FROM metadata")}
    finally:
        con.close()


def read_go_sqlite(path: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read GO terms and ``is_a``/``part_of`` edges of all three ontologies from ``GO.sqlite``.

    Parameters
    ----------
    path : str or Path
        ``GO.db/extdata/GO.sqlite``.

    Returns
    -------
    go_terms : pl.DataFrame
        ``go_id, name, namespace``; the ``universal`` root (``all``) is dropped. Obsolete
        terms live in a separate table of GO.db and are therefore never included.
    go_edges : pl.DataFrame
        ``child, parent, relation``.

    Raises
    ------
    ReferenceDataError
        The file is missing, not SQLite, or lacks the expected tables.
    """
    parents = tuple(f"go_{ns.lower()}_parents" for ns in NAMESPACES)
    con = _connect(path, ("go_term", *parents))
    try:
        placeholders = ",".join("?" * len(NAMESPACES))
        terms = pl.DataFrame(
            con.execute(
                f"SELECT go_id, term, ontology FROM go_term WHERE ontology IN ({placeholders})",
                NAMESPACES,
            ).fetchall(),
            schema=SCHEMAS["go_terms"],
            orient="row",
        )
        edge_sql = " UNION ALL ".join(
            f"SELECT c.go_id, p.go_id, e.relationship_type FROM {table} e "
            "JOIN go_term c ON c._id = e._id JOIN go_term p ON p._id = e._parent_id"
            for table in parents
        )
        edges = _frame(con, edge_sql, SCHEMAS["go_edges"])
    finally:
        con.close()
    edges = (
        edges.filter(pl.col("relation").is_in(list(_RELATION)))
        .with_columns(pl.col("relation").replace_strict(_RELATION))
        .unique(maintain_order=True)
    )
    return validate(terms, "go_terms", path), validate(edges, "go_edges", path)


def read_orgdb_annotations(path: str | Path) -> pl.DataFrame:
    """Read direct GO annotations of gene symbols (CC, BP, MF) from ``org.Hs.eg.sqlite``.

    Returns
    -------
    pl.DataFrame
        ``gene, go_id, namespace, evidence`` (``gene_annotations`` schema), deduplicated.
    """
    tables = tuple(f"go_{ns.lower()}" for ns in NAMESPACES)
    con = _connect(path, ("gene_info", *tables))
    try:
        sql = " UNION ALL ".join(
            f"SELECT g.symbol, a.go_id, '{ns}', a.evidence FROM go_{ns.lower()} a "
            "JOIN gene_info g ON g._id = a._id"
            for ns in NAMESPACES
        )
        df = _frame(con, sql, SCHEMAS["gene_annotations"])
    finally:
        con.close()
    return validate(df.unique(maintain_order=True), "gene_annotations", path)


def read_orgdb_kegg(path: str | Path) -> pl.DataFrame:
    """Read gene symbol → KEGG pathway id (``path_id``, e.g. ``'04610'``) from ``org.Hs.eg.sqlite``."""
    con = _connect(path, ("gene_info", "kegg"))
    try:
        df = _frame(
            con,
            "SELECT g.symbol, k.path_id FROM kegg k JOIN gene_info g ON g._id = k._id",
            SCHEMAS["kegg"],
        )
    finally:
        con.close()
    return validate(df.unique(maintain_order=True), "kegg", path)
