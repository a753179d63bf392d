"""The reference tables, written down as code: one polars schema per table.

Every reader returns frames that pass :func:`validate`; every writer checks them again,
so a snapshot on disk always has exactly these columns and types.

Tables
------
go_terms
    ``go_id, name, namespace`` — one row per live (non-obsolete) GO term.
go_edges
    ``child, parent, relation`` — DAG edges, ``relation`` in ``{'is_a', 'part_of'}``.
gene_annotations
    ``gene, go_id, namespace, evidence`` — *direct* annotations of gene symbols.
kegg
    ``gene, pathway_id`` — KEGG pathway membership (5-digit map ids).
complexes
    ``source, complex_id, complex_name, gene`` — one row per complex member.
gene_pairs
    ``source, gene_a, gene_b`` — unordered related pairs, stored with ``gene_a < gene_b``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cellrep_ml.errors import ReferenceDataError

__all__ = ["NAMESPACES", "RELATIONS", "SCHEMAS", "empty", "validate"]

#: GO namespaces under their Bioconductor short labels.
NAMESPACES: tuple[str, ...] = ("CC", "BP", "MF")
#: The DAG relations kept; both are transitive and safe to propagate annotations over.
RELATIONS: tuple[str, ...] = ("is_a", "part_of")

SCHEMAS: dict[str, pl.Schema] = {
    "go_terms": pl.Schema({"go_id": pl.String, "name": pl.String, "namespace": pl.String}),
    "go_edges": pl.Schema({"child": pl.String, "parent": pl.String, "relation": pl.String}),
    "gene_annotations": pl.Schema(
        {"gene": pl.String, "go_id": pl.String, "namespace": pl.String, "evidence": pl.String}
    ),
    "kegg": pl.Schema({"gene": pl.String, "pathway_id": pl.String}),
    "complexes": pl.Schema(
        {"source": pl.String, "complex_id": pl.Int64, "complex_name": pl.String, "gene": pl.String}
    ),
    "gene_pairs": pl.Schema({"source": pl.String, "gene_a": pl.String, "gene_b": pl.String}),
}

# column -> allowed values, checked by validate()
_DOMAINS: dict[str, dict[str, tuple[str, ...]]] = {
    "go_terms": {"namespace": NAMESPACES},
    "go_edges": {"relation": RELATIONS},
    "gene_annotations": {"namespace": NAMESPACES},
}


def empty(table: str) -> pl.DataFrame:
    """An empty frame with the schema of ``table``."""
    return pl.DataFrame(schema=SCHEMAS[table])


def validate(df: pl.DataFrame, table: str, source: str | Path) -> pl.DataFrame:
    """Check ``df`` against the schema of ``table`` and return it with columns in order.

    Parameters
    ----------
    df : pl.DataFrame
        The frame to check; extra columns are dropped.
    table : str
        A key of :data:`SCHEMAS`.
    source : str or Path
        The file the frame came from, quoted in errors.

    Raises
    ------
    ReferenceDataError
        A column is missing or of another type, holds nulls, or a value is out of its domain.
    """
    schema = SCHEMAS[table]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ReferenceDataError(
            f"{source}: table {table!r} lacks columns {missing}; expected {list(schema)}, "
            f"got {df.columns}"
        )
    df = df.select(list(schema))
    for col, dtype in schema.items():
        if df.schema[col] != dtype:
            raise ReferenceDataError(
                f"{source}: column {table}.{col} should be {dtype}, got {df.schema[col]}"
            )
        nulls = df[col].null_count()
        if nulls:
            raise ReferenceDataError(f"{source}: column {table}.{col} has {nulls} null values")
    for col, allowed in _DOMAINS.get(table, {}).items():
        bad = df.filter(~pl.col(col).is_in(allowed))[col].unique().sort().to_list()
        if bad:
            raise ReferenceDataError(
                f"{source}: column {table}.{col} should be one of {list(allowed)}, got {bad[:5]}"
            )
    return df
