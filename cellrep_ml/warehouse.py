"""The DuckDB warehouse (``<data home>/warehouse.duckdb``): cell embeddings and protein features.

Layout
------
Vectors are DuckDB ``FLOAT[n]`` arrays, whose length is part of the column type: that is
what lets ``array_cosine_similarity`` and ``array_distance`` run on them, and what keeps
one column from holding vectors of several lengths. Models differ in length (PCI conv4
384, DeepLoc 512, cytoself 9,216, ...), so there is **one table per vector length**, shared
by every model of that length::

    cell_embeddings_d{n}   model_name, model_version, dataset, cell_line, cell_id, protein,
                           plate, well, field, split, normalization, embedding FLOAT[n]
    protein_features_d{n}  model_name, model_version, dataset, protein, n_cells,
                           stat ('mean' | 'median'), normalization, features FLOAT[n]
    feature_partitions     one row per materialised partition: kind, model_name,
                           model_version, dataset, cell_line, dim, table_name, n_rows,
                           normalizations, written_at — where to find a model's vectors
    cell_embeddings        view over every cell_embeddings_d* table, with ``dim`` and the
    protein_features       vector as a variable-length FLOAT[] list (list_* functions)

A table per length (rather than per model) keeps the number of tables small, lets two
models of the same length be compared in one query, and a model whose version changes
its feature layer simply lands in another table. ``feature_partitions`` (or
``cellrep sql "FROM feature_partitions"``) says which table holds a model.

Partitions and writers
----------------------
Cell embeddings are written per (model_name, model_version, dataset, cell_line), protein
features per (model_name, model_version, dataset). Writing a partition replaces all its
rows, in every length table, in one transaction (DELETE + INSERT + COMMIT): readers see
the old rows or the new ones, never a mix, and a write that fails leaves the old rows.
One writer at a time: a writer holds an exclusive ``fcntl`` lock on the sidecar file
``warehouse.duckdb.lock`` and keeps the database open read-write only while it writes.
Readers open it read-only (:func:`connect`) and retry while a writer holds DuckDB's lock.
DuckDB's file lock also keeps a writer out while any reader has the file open, so
readers are short-lived too (``cellrep sql`` and the functions here open one connection
per call); a notebook should close its connection, or read through these functions.

Example
-------
The 20 proteins most similar to SEC61B under a 384-d PCI model, as one query (run it
with ``cellrep sql``; :func:`nearest_proteins` is the same query with parameters)::

    SELECT protein, array_cosine_similarity(features, (
             SELECT features FROM protein_features_d384
             WHERE protein = 'SEC61B' AND model_name = 'pci' AND model_version = '1'
               AND stat = 'mean')) AS similarity
    FROM protein_features_d384
    WHERE model_name = 'pci' AND model_version = '1' AND stat = 'mean'
      AND protein <> 'SEC61B'
    ORDER BY similarity DESC
    LIMIT 20

The inner query must name one profile: when the model version has several datasets or
normalisations, DuckDB refuses ("more than one row returned by a subquery") until
``dataset = ...`` / ``normalization = ...`` are added to both WHERE clauses. (A self-join
``USING (model_name, model_version, dataset, stat, normalization)`` gives the same answer
but carries every vector through the join: twice the time at 20,000 × 512.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import polars as pl

from cellrep_ml.config import warehouse_path
from cellrep_ml.embed._normalize import NORMALIZATIONS
from cellrep_ml.embed._vectors import vector_series

__all__ = [
    "CELL_EMBEDDING_COLUMNS",
    "CELL_EMBEDDING_KEY",
    "KINDS",
    "PROTEIN_FEATURE_COLUMNS",
    "PROTEIN_FEATURE_KEY",
    "VECTOR_COLUMN",
    "attach_read_only",
    "cell_embedding_frame",
    "connect",
    "latest_version",
    "nearest_proteins",
    "nearest_proteins_sql",
    "protein_feature_frame",
    "read_features",
    "read_table",
    "replace_partition",
    "table_name",
    "write_cell_embeddings",
    "write_protein_features",
    "writer",
]

Kind = Literal["cell_embeddings", "protein_features"]
KINDS: tuple[str, ...] = ("cell_embeddings", "protein_features")

#: Columns of ``cell_embeddings_d{n}`` before the vector, with their DuckDB types.
CELL_EMBEDDING_COLUMNS: dict[str, str] = {
    "model_name": "VARCHAR NOT NULL",
    "model_version": "VARCHAR NOT NULL",
    "dataset": "VARCHAR NOT NULL",
    "cell_line": "VARCHAR NOT NULL",
    "cell_id": "VARCHAR NOT NULL",
    "protein": "VARCHAR NOT NULL",
    "plate": "VARCHAR",
    "well": "VARCHAR",
    "field": "BIGINT",
    "split": "VARCHAR",
    "normalization": "VARCHAR NOT NULL",
}
#: Columns of ``protein_features_d{n}`` before the vector.
PROTEIN_FEATURE_COLUMNS: dict[str, str] = {
    "model_name": "VARCHAR NOT NULL",
    "model_version": "VARCHAR NOT NULL",
    "dataset": "VARCHAR NOT NULL",
    "protein": "VARCHAR NOT NULL",
    "n_cells": "BIGINT NOT NULL",
    "stat": "VARCHAR NOT NULL",
    "normalization": "VARCHAR NOT NULL",
}

CELL_EMBEDDING_KEY = ("model_name", "model_version", "dataset", "cell_line")
PROTEIN_FEATURE_KEY = ("model_name", "model_version", "dataset")

_COLUMNS = {"cell_embeddings": CELL_EMBEDDING_COLUMNS, "protein_features": PROTEIN_FEATURE_COLUMNS}
_KEYS = {"cell_embeddings": CELL_EMBEDDING_KEY, "protein_features": PROTEIN_FEATURE_KEY}
#: Name of the vector column of each kind.
VECTOR_COLUMN = {"cell_embeddings": "embedding", "protein_features": "features"}
_POLARS = {"VARCHAR": pl.Utf8, "BIGINT": pl.Int64}
_TABLE_RE = re.compile(r"^(cell_embeddings|protein_features)_d(\d+)$")

_PARTITIONS_DDL = """
CREATE TABLE IF NOT EXISTS feature_partitions (
    kind VARCHAR NOT NULL, model_name VARCHAR NOT NULL, model_version VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL, cell_line VARCHAR, dim INTEGER NOT NULL,
    table_name VARCHAR NOT NULL, n_rows BIGINT NOT NULL, normalizations VARCHAR[],
    written_at TIMESTAMP WITH TIME ZONE NOT NULL
)"""


def table_name(kind: Kind, dim: int) -> str:
    """``cell_embeddings_d{dim}`` or ``protein_features_d{dim}``."""
    if kind not in KINDS:
        raise ValueError(f"unknown feature table {kind!r}; expected one of {KINDS}")
    return f"{kind}_d{int(dim)}"


# ----------------------------------------------------------------------------- connections


def _is_lock_conflict(err: duckdb.Error) -> bool:
    return "lock" in str(err).lower()


def _retry(open_fn, path: Path, timeout: float):
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return open_fn()
        except duckdb.IOException as err:
            if not _is_lock_conflict(err) or time.monotonic() >= deadline:
                raise TimeoutError(f"warehouse {path} stayed locked by another process for "
                                   f"{timeout:.0f} s: {err}") from err
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def connect(path: str | Path | None = None, *, timeout: float = 30.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse; waits up to ``timeout`` s for a writer.

    Raises
    ------
    FileNotFoundError
        If the warehouse does not exist yet.
    TimeoutError
        If a writer kept the database locked longer than ``timeout``.
    """
    path = Path(path) if path is not None else warehouse_path()
    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path}; embeddings are written there by "
                                "the cell_embeddings / protein_features assets")
    return _retry(lambda: duckdb.connect(str(path), read_only=True), path, timeout)


def attach_read_only(con: duckdb.DuckDBPyConnection, path: str | Path, alias: str = "warehouse",
                     *, timeout: float = 30.0) -> None:
    """``ATTACH`` the warehouse read-only to ``con`` as ``alias``, waiting for a writer."""
    quoted = str(path).replace("'", "''")
    _retry(lambda: con.execute(f"ATTACH '{quoted}' AS {alias} (READ_ONLY)"), Path(path), timeout)


@contextlib.contextmanager
def writer(path: str | Path | None = None, *,
           timeout: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """The one read-write connection: exclusive sidecar lock, short-lived, always closed.

    Parameters
    ----------
    path : str or Path, optional
        Default ``warehouse_path()``; created with its folder if missing.
    timeout : float
        Seconds to wait for another writer (the lock) and for readers (DuckDB's lock).

    Raises
    ------
    TimeoutError
        If the lock could not be taken within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    with exclusive(path, timeout=timeout) as path:
        remaining = max(deadline - time.monotonic(), 1.0)
        con = _retry(lambda: duckdb.connect(str(path)), path, remaining)
        try:
            con.execute(_PARTITIONS_DDL)
            yield con
        finally:
            con.close()


@contextlib.contextmanager
def exclusive(path: str | Path | None = None, *, timeout: float = 600.0) -> Iterator[Path]:
    """Hold the writers' sidecar lock without opening the database, for an outside writer.

    A process that writes the warehouse through its own DuckDB connection (``dbt build``
    of ``dbt_go``) holds this lock meanwhile, so no :func:`writer` starts mid-build.
    Yields the warehouse path.

    Raises
    ------
    TimeoutError
        If another writer held the lock longer than ``timeout`` seconds.
    """
    path = Path(path) if path is not None else warehouse_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another process is writing the warehouse {path} "
                                       f"(lock {lock} held for {timeout:.0f} s)") from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # releases the flock


# ----------------------------------------------------------------------------- frames


def cell_embedding_frame(
    cells: pl.DataFrame,
    embeddings: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    normalization: str,
) -> pl.DataFrame:
    """Rows for ``cell_embeddings``: the cell index's metadata, the model, the vectors.

    Parameters
    ----------
    cells : pl.DataFrame
        Cell index rows (``CELL_INDEX_SCHEMA``), row i for ``embeddings[i]``.
    embeddings : (N, D) ndarray
    model_name, model_version : str
    normalization : {"plate", "mad", "none"}

    Returns
    -------
    pl.DataFrame
        ``CELL_EMBEDDING_COLUMNS`` then ``embedding`` (Array(Float32, D)).
    """
    if len(embeddings) != cells.height:
        raise ValueError(f"{cells.height} cells but {len(embeddings)} embeddings")
    meta = [c for c in CELL_EMBEDDING_COLUMNS if c not in ("model_name", "model_version",
                                                          "normalization")]
    missing = [c for c in meta if c not in cells.columns]
    if missing:
        raise ValueError(f"cell table is missing columns {missing}; has {cells.columns}")
    return cells.select(
        pl.lit(str(model_name)).alias("model_name"),
        pl.lit(str(model_version)).alias("model_version"),
        *meta,
        pl.lit(normalization).alias("normalization"),
    ).with_columns(vector_series("embedding", embeddings))


def protein_feature_frame(profiles: pl.DataFrame, *, model_name: str,
                          model_version: str) -> pl.DataFrame:
    """Rows for ``protein_features`` from :func:`cellrep_ml.embed.protein_profiles` output."""
    return profiles.with_columns(model_name=pl.lit(str(model_name)),
                                 model_version=pl.lit(str(model_version)))


def _conform(frame: pl.DataFrame, kind: Kind) -> tuple[pl.DataFrame, int]:
    """Cast ``frame`` to the table's columns; return it and the vector length."""
    columns, vec = _COLUMNS[kind], VECTOR_COLUMN[kind]
    missing = [c for c in (*columns, vec) if c not in frame.columns]
    if missing:
        raise ValueError(f"{kind}: missing columns {missing}; has {frame.columns}")
    dtype = frame.schema[vec]
    if isinstance(dtype, pl.List) and frame.height:
        lengths = frame.get_column(vec).list.len().unique()
        if lengths.len() != 1:
            raise ValueError(f"{kind}: vectors of several lengths {sorted(lengths.to_list())} "
                             "in one write; write each model separately")
        dtype = pl.Array(pl.Float32, int(lengths[0]))
    if not isinstance(dtype, pl.Array) or dtype.size < 1:
        raise ValueError(f"{kind}: column {vec!r} must hold fixed-length vectors "
                         f"(polars Array), got {frame.schema[vec]}")
    out = frame.select(
        *[pl.col(c).cast(_POLARS[t.split()[0]]) for c, t in columns.items()],
        pl.col(vec).cast(pl.Array(pl.Float32, dtype.size)),
    )
    for c, t in columns.items():
        if "NOT NULL" in t and out.get_column(c).null_count():
            raise ValueError(f"{kind}: column {c!r} has {out.get_column(c).null_count()} "
                             "missing values")
    bad = set(out.get_column("normalization").unique().to_list()) - set(NORMALIZATIONS)
    if bad:
        raise ValueError(f"{kind}: unknown normalization {sorted(bad)}; expected {NORMALIZATIONS}")
    if kind == "protein_features":
        stats = set(out.get_column("stat").unique().to_list()) - {"mean", "median"}
        if stats:
            raise ValueError(f"protein_features: unknown stat {sorted(stats)}; "
                             "expected 'mean' or 'median'")
    return out, dtype.size


# ----------------------------------------------------------------------------- writing


def _feature_tables(con: duckdb.DuckDBPyConnection, kind: str | None = None,
                    catalog: str | None = None) -> list[tuple[str, int]]:
    """``(table_name, dim)`` of every length table (of ``kind``), by ascending dim."""
    where = "table_type = 'BASE TABLE'"
    params: list[str] = []
    if catalog is not None:
        where += " AND table_catalog = ?"
        params.append(catalog)
    names = con.execute(f"SELECT table_name FROM information_schema.tables WHERE {where}",
                        params).fetchall()
    found = []
    for (name,) in names:
        m = _TABLE_RE.match(name)
        if m and (kind is None or m.group(1) == kind):
            found.append((name, int(m.group(2))))
    return sorted(found, key=lambda t: t[1])


def _refresh_view(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    tables = _feature_tables(con, kind)
    cols = ", ".join(_COLUMNS[kind])
    vec = VECTOR_COLUMN[kind]
    union = " UNION ALL ".join(
        f"SELECT {cols}, {dim}::INTEGER AS dim, {vec}::FLOAT[] AS {vec} FROM {name}"
        for name, dim in tables)
    con.execute(f"CREATE OR REPLACE VIEW {kind} AS {union}")


def _create_table(con: duckdb.DuckDBPyConnection, kind: Kind, dim: int) -> str:
    name = table_name(kind, dim)
    if (name, dim) not in _feature_tables(con, kind):
        cols = ", ".join(f"{c} {t}" for c, t in _COLUMNS[kind].items())
        con.execute(f"CREATE TABLE {name} ({cols}, {VECTOR_COLUMN[kind]} FLOAT[{dim}] NOT NULL)")
        _refresh_view(con, kind)
    return name


def _insert_rows(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Insert the registered ``_incoming`` Arrow table into ``name`` (one statement)."""
    con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _incoming")


def _write(frame: pl.DataFrame, kind: Kind, path: str | Path | None, timeout: float) -> int:
    data, dim = _conform(frame, kind)
    if data.height == 0:
        raise ValueError(f"{kind}: nothing to write (0 rows)")
    key = list(_KEYS[kind])
    parts = (data.group_by(key)
             .agg(pl.len().alias("n_rows"),
                  pl.col("normalization").unique().sort().alias("normalizations")))
    with writer(path, timeout=timeout) as con:
        # Registered Arrow tables are read in place by the INSERT ... SELECT: no Python rows.
        con.register("_incoming", data.to_arrow())
        con.register("_parts", parts.to_arrow())
        con.execute("BEGIN TRANSACTION")
        try:
            name = _create_table(con, kind, dim)
            match = " AND ".join(f"t.{c} = p.{c}" for c in key)
            for other, _ in _feature_tables(con, kind):
                con.execute(f"DELETE FROM {other} AS t USING _parts AS p WHERE {match}")
            cell_line = "p.cell_line" if "cell_line" in key else "NULL"
            part_match = " AND ".join(f"t.{c} = p.{c}" for c in PROTEIN_FEATURE_KEY)
            part_match += f" AND t.cell_line IS NOT DISTINCT FROM {cell_line}"
            con.execute(f"DELETE FROM feature_partitions AS t USING _parts AS p "
                        f"WHERE t.kind = '{kind}' AND {part_match}")
            _insert_rows(con, name)
            con.execute(
                f"INSERT INTO feature_partitions SELECT '{kind}', p.model_name, p.model_version, "
                f"p.dataset, {cell_line}, {dim}, '{name}', p.n_rows, p.normalizations, now() "
                "FROM _parts AS p")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_incoming")
            con.unregister("_parts")
    return data.height


def write_cell_embeddings(frame: pl.DataFrame, *, path: str | Path | None = None,
                          timeout: float = 60.0) -> int:
    """Replace the cell-embedding partitions present in ``frame`` by its rows.

    Parameters
    ----------
    frame : pl.DataFrame
        ``CELL_EMBEDDING_COLUMNS`` and ``embedding`` (Array(Float32, D)), e.g. from
        :func:`cell_embedding_frame`. Every (model_name, model_version, dataset,
        cell_line) it holds is replaced as a whole.
    path : str or Path, optional
        Warehouse file; default ``warehouse_path()``.
    timeout : float
        Seconds to wait for other writers and readers.

    Returns
    -------
    int
        Rows written.
    """
    return _write(frame, "cell_embeddings", path, timeout)


def write_protein_features(frame: pl.DataFrame, *, path: str | Path | None = None,
                           timeout: float = 60.0) -> int:
    """Replace the protein-feature partitions present in ``frame`` by its rows.

    ``frame`` holds ``PROTEIN_FEATURE_COLUMNS`` and ``features`` (Array(Float32, D)), e.g.
    from :func:`protein_feature_frame`; every (model_name, model_version, dataset) it holds
    is replaced as a whole (all its statistics and normalisations). Returns rows written.
    """
    return _write(frame, "protein_features", path, timeout)


# ----------------------------------------------------------------------------- result tables

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _check_identifier(name: str, what: str) -> None:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a plain lower-case SQL identifier")


def replace_partition(table: str, frame: pl.DataFrame, partition: dict[str, object], *,
                      path: str | Path | None = None, timeout: float = 60.0) -> int:
    """Replace one partition of a results table (evaluations, clusters, ...) by ``frame``.

    The rows of ``table`` whose ``partition`` columns equal its values are deleted and
    ``frame`` inserted, in one transaction under the writer lock: readers see the old rows
    or the new ones. The table is created from ``frame``'s schema on first write; columns
    are matched by name afterwards, so a frame lacking a table column fails loudly.

    Parameters
    ----------
    table : str
        Table name, a plain identifier (``evaluation_results``, ``protein_clusters``, ...).
    frame : pl.DataFrame
        The partition's new rows (may be empty: the partition is then cleared). Every
        ``partition`` column must be present and hold only the partition's value.
    partition : dict
        Column → value naming the partition, e.g. ``{"dataset": "opencell",
        "model_name": "pci"}``.

    Returns
    -------
    int
        Rows written.
    """
    _check_identifier(table, "table")
    if not partition:
        raise ValueError("partition must name at least one column")
    for col, value in partition.items():
        _check_identifier(col, "partition column")
        if col not in frame.columns:
            raise ValueError(f"{table}: the frame lacks partition column {col!r}")
        other = frame.filter(pl.col(col) != value).height if frame.height else 0
        if other:
            raise ValueError(f"{table}: {other} rows have {col} other than {value!r}")
    where = " AND ".join(f"{c} = ${c}" for c in partition)
    with writer(path, timeout=timeout) as con:
        con.register("_incoming", frame.to_arrow())
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM _incoming LIMIT 0")
            con.execute(f"DELETE FROM {table} WHERE {where}", dict(partition))
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_incoming")
    return frame.height


def read_table(query_or_table: str, params: dict[str, object] | None = None, *,
               path: str | Path | None = None) -> pl.DataFrame:
    """A table name or a SELECT over the warehouse, read-only, as a polars frame."""
    sql = query_or_table
    if _IDENTIFIER.match(query_or_table):
        sql = f"SELECT * FROM {query_or_table}"
    con = connect(path)
    try:
        return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())
    finally:
        con.close()


# ----------------------------------------------------------------------------- reading


def _resolve(con: duckdb.DuckDBPyConnection, kind: Kind, model_name: str,
             model_version: str | None, dataset: str | None) -> tuple[str, str]:
    """``(model_version, table_name)``: the newest version written when none is given."""
    has = con.execute("SELECT count(*) FROM information_schema.tables "
                      "WHERE table_name = 'feature_partitions'").fetchone()[0]
    rows = [] if not has else con.execute(
        "SELECT model_version, table_name, max(written_at) AS t FROM feature_partitions "
        "WHERE kind = $kind AND model_name = $model "
        "AND ($version IS NULL OR model_version = $version) "
        "AND ($dataset IS NULL OR dataset = $dataset) "
        "GROUP BY ALL ORDER BY t DESC",
        {"kind": kind, "model": model_name, "version": model_version, "dataset": dataset},
    ).fetchall()
    if not rows:
        what = f"model {model_name!r}" + (f" version {model_version!r}" if model_version else "")
        what += f" dataset {dataset!r}" if dataset else ""
        raise LookupError(f"no {kind} for {what} in the warehouse "
                          "(see `cellrep sql \"FROM feature_partitions\"`)")
    version = rows[0][0]
    tables = sorted({t for v, t, _ in rows if v == version})
    if len(tables) > 1:
        raise LookupError(f"{kind} of {model_name!r} version {version!r} span tables {tables} "
                          "(vectors of several lengths); pick a dataset")
    return version, tables[0]


def latest_version(kind: Kind, *, model_name: str, dataset: str | None = None,
                   path: str | Path | None = None) -> str:
    """The model version whose ``kind`` rows (of ``dataset``) were written most recently.

    Raises
    ------
    LookupError
        If the warehouse holds none.
    """
    con = connect(path)
    try:
        return _resolve(con, kind, model_name, None, dataset)[0]
    finally:
        con.close()


def read_features(
    kind: Kind,
    *,
    model_name: str,
    model_version: str | None = None,
    dataset: str | None = None,
    path: str | Path | None = None,
) -> pl.DataFrame:
    """One model's cell embeddings or protein features, vectors as ``pl.Array``.

    Parameters
    ----------
    kind : {"cell_embeddings", "protein_features"}
    model_name : str
    model_version : str, optional
        Default: the version written most recently.
    dataset : str, optional
        Default: every dataset of that version.
    path : str or Path, optional
        Warehouse file; default ``warehouse_path()``.

    Returns
    -------
    pl.DataFrame
        The table's columns, the vector last; sorted by the natural key.

    Raises
    ------
    LookupError
        If the warehouse holds nothing for the model (and version, dataset).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown feature table {kind!r}; expected one of {KINDS}")
    con = connect(path)
    try:
        version, name = _resolve(con, kind, model_name, model_version, dataset)
        order = ("dataset, cell_line, cell_id, normalization" if kind == "cell_embeddings"
                 else "dataset, protein, stat, normalization")
        arrow = con.sql(
            f"SELECT * FROM {name} WHERE model_name = $model AND model_version = $version "
            f"AND ($dataset IS NULL OR dataset = $dataset) ORDER BY {order}",
            params={"model": model_name, "version": version, "dataset": dataset},
        ).to_arrow_table()
    finally:
        con.close()
    return pl.from_arrow(arrow)


def nearest_proteins_sql(dim: int) -> str:
    """The nearest-protein query over ``protein_features_d{dim}``, with named parameters.

    Parameters: ``$protein``, ``$model``, ``$version``, ``$stat``, ``$normalization``
    (NULL: any), ``$dataset`` (NULL: any), ``$k``. One row per other protein: ``protein``,
    ``dataset``, ``n_cells``, ``similarity`` (cosine), most similar first. DuckDB raises
    if the filters leave several profiles of ``$protein`` (several datasets or
    normalisations).
    """
    name = table_name("protein_features", dim)
    where = ("model_name = $model AND model_version = $version AND stat = $stat "
             "AND ($normalization IS NULL OR normalization = $normalization) "
             "AND ($dataset IS NULL OR dataset = $dataset)")
    return f"""
SELECT protein, dataset, n_cells, array_cosine_similarity(features, (
         SELECT features FROM {name} WHERE protein = $protein AND {where})) AS similarity
FROM {name}
WHERE protein <> $protein AND {where}
ORDER BY similarity DESC, protein
LIMIT $k"""


def nearest_proteins(
    protein: str,
    *,
    model_name: str,
    model_version: str | None = None,
    dataset: str | None = None,
    stat: str = "mean",
    normalization: str | None = None,
    k: int = 20,
    path: str | Path | None = None,
) -> pl.DataFrame:
    """The ``k`` proteins whose profiles are most cosine-similar to ``protein``'s.

    Returns
    -------
    pl.DataFrame
        ``protein``, ``dataset``, ``n_cells``, ``similarity``; most similar first.

    Raises
    ------
    LookupError
        If the warehouse holds no protein features of the model, or none of ``protein``.
    ValueError
        If ``protein`` has several profiles left by the filters.
    """
    con = connect(path)
    try:
        version, name = _resolve(con, "protein_features", model_name, model_version, dataset)
        dim = int(_TABLE_RE.match(name).group(2))
        try:
            arrow = con.sql(nearest_proteins_sql(dim), params={
                "protein": protein, "model": model_name, "version": version, "stat": stat,
                "normalization": normalization, "dataset": dataset, "k": int(k),
            }).to_arrow_table()
        except duckdb.InvalidInputException as err:
            raise ValueError(f"{protein!r} has several {stat} profiles under {model_name!r} "
                             f"version {version!r} (datasets or normalisations); pass "
                             f"dataset= and normalization= ({err})") from err
    finally:
        con.close()
    result = pl.from_arrow(arrow)
    if result.height and result.get_column("similarity").null_count() == result.height:
        raise LookupError(f"protein {protein!r} has no {stat} profile under {model_name!r} "
                          f"version {version!r}")
    return result
