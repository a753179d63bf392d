"""Reading a screen's manifest and the checks that need nothing but the table.

A manifest is CSV or Parquet with the columns of
:data:`~cellrep_ml.io.schema.MANIFEST_SCHEMA`, one row per field of view. Rows are
numbered from 1 (the header is row 0), the numbering every error message uses.

Two kinds of problems are told apart:

* the table itself is malformed (unreadable, missing columns, a value that is not of its
  column's type, an empty key): :func:`read_manifest` raises
  :class:`~cellrep_ml.errors.ManifestError`, because no row of it can be trusted;
* one row is wrong (a duplicate field, a path escaping the screen root, as many paths as
  channels not given): :func:`row_problems` and :func:`resolve_paths` report it, and
  ingestion quarantines that field while the rest goes on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from cellrep_ml.errors import DuplicateFieldError, ManifestError, PathEscapeError
from cellrep_ml.io.schema import FIELD_KEY, LIST_SEP, MANIFEST_SCHEMA

__all__ = [
    "REQUIRED_COLUMNS",
    "field_id",
    "read_manifest",
    "resolve_paths",
    "row_problems",
    "split_list",
]

#: Columns that may not be empty in any row; ``channels`` may, when the files name
#: their channels themselves (OME-TIFF, OME-Zarr).
REQUIRED_COLUMNS = ("dataset", "cell_line", "plate", "well", "field", "protein", "path")

# Reported bad cells per error: enough to fix a spreadsheet, short enough to read.
_MAX_REPORTED = 10


def read_manifest(path: str | Path) -> pl.DataFrame:
    """Read a manifest (CSV or Parquet) into a typed frame with a 1-based ``row`` column.

    Parameters
    ----------
    path : str or Path
        ``*.csv`` or ``*.parquet``. CSV cells are read as text and then typed, so plate
        names like ``"001"`` keep their zeros; surrounding whitespace is stripped and
        empty cells are missing values.

    Returns
    -------
    manifest : pl.DataFrame
        ``row`` (Int64, 1-based data row; the header is row 0) followed by the columns of
        ``MANIFEST_SCHEMA`` in schema order, with schema types. Extra columns are kept
        after them, as read.

    Raises
    ------
    ManifestError
        The file is missing or unreadable, has no data rows, lacks a column (row 0, the
        header), holds a value that is not of its column's type, or leaves a required
        column empty; the message names the file, the row(s) and the column.
    """
    path = Path(path)
    raw = _read_table(path)
    missing = [c for c in MANIFEST_SCHEMA if c not in raw.columns]
    if missing:
        raise ManifestError(
            f"header lacks column(s) {missing}",
            path=path, row=0,
            expected=f"columns {list(MANIFEST_SCHEMA)}",
            received=f"{raw.columns}",
        )
    if raw.height == 0:
        raise ManifestError("no data rows", path=path, expected="one row per field of view",
                            received="only a header")
    raw = raw.with_columns(pl.int_range(1, raw.height + 1, dtype=pl.Int64).alias("row"))
    typed = [_typed_column(raw, name, dtype, path) for name, dtype in MANIFEST_SCHEMA.items()]
    extra = [c for c in raw.columns if c not in MANIFEST_SCHEMA and c != "row"]
    df = pl.DataFrame([raw["row"], *typed, *(raw[c] for c in extra)])
    _check_required(df, path)
    return df


def row_problems(manifest: pl.DataFrame, *, path: str | Path | None = None) -> dict[int, ManifestError]:
    """Per-row problems visible in the table alone, keyed by manifest row.

    Checks that no two rows share a ``FIELD_KEY`` (each row of a duplicated key is
    reported, naming every row of it: which one is right cannot be told) and that a
    multi-file ``path`` lists one file per name in ``channels``.

    Parameters
    ----------
    manifest : pl.DataFrame
        As returned by :func:`read_manifest`.
    path : str or Path, optional
        The manifest file, named in the messages.

    Returns
    -------
    problems : dict of int to ManifestError
        Empty when every row is fine.
    """
    problems: dict[int, ManifestError] = {}
    dupes = (
        manifest.group_by(list(FIELD_KEY), maintain_order=True)
        .agg(pl.col("row").sort())
        .filter(pl.col("row").list.len() > 1)
    )
    for rec in dupes.iter_rows(named=True):
        rows = rec["row"]
        key = ", ".join(f"{k}={rec[k]!r}" for k in FIELD_KEY)
        for r in rows:
            problems[r] = DuplicateFieldError(
                f"duplicate field ({key}) in rows {_and(rows)}",
                path=path, row=r,
                expected=f"one row per field of view (unique {'/'.join(FIELD_KEY)})",
                received=f"{len(rows)} rows",
            )
    for r, p, ch in manifest.select("row", "path", "channels").iter_rows():
        if r in problems:
            continue
        files, names = split_list(p), split_list(ch)
        if len(files) > 1 and len(files) != len(names):
            problems[r] = ManifestError(
                "one file per channel needs one channel name per file",
                path=path, row=r,
                expected=f"{len(files)} names in 'channels' for {len(files)} files in 'path'",
                received=f"{len(names)} ({ch!r})",
            )
        elif len(set(names)) != len(names):
            problems[r] = ManifestError(
                "a channel name appears twice in 'channels'",
                path=path, row=r, expected="distinct channel names", received=repr(ch),
            )
    return problems


def resolve_paths(cell: str, root: str | Path, *, row: int | None = None) -> list[Path]:
    """Absolute paths of a manifest ``path`` cell, checked to stay inside ``root``.

    Relative paths are joined to ``root`` (the manifest's folder); ``..`` is resolved
    lexically so a path cannot climb out of the root. Symbolic links are not followed:
    a screen may link to data on shared storage.

    Parameters
    ----------
    cell : str
        One path, or ``|``-separated paths (one file per channel).
    root : str or Path
        The screen root.
    row : int, optional
        Manifest row, named in errors.

    Returns
    -------
    paths : list of Path
        Normalised absolute paths, in the cell's order.

    Raises
    ------
    PathEscapeError
        A path, once normalised, lies outside ``root``.
    ManifestError
        The cell holds no path.
    """
    root = Path(root)
    # A root given through a symlink (e.g. /tmp on some systems) must accept absolute
    # paths written either way.
    roots = {Path(os.path.abspath(root)), root.resolve()}
    files = split_list(cell)
    if not files:
        raise ManifestError("empty 'path'", row=row, expected="a file path relative to the "
                            "manifest's folder", received=repr(cell))
    out = []
    for f in files:
        p = Path(f).expanduser()
        full = Path(os.path.normpath(p if p.is_absolute() else Path(os.path.abspath(root)) / p))
        if not any(full == r or full.is_relative_to(r) for r in roots):
            raise PathEscapeError(
                "path escapes the screen root",
                path=f, row=row,
                expected=f"a file inside {os.path.abspath(root)}",
                received=str(full),
            )
        out.append(full)
    return out


def split_list(cell: str | None) -> list[str]:
    """Split a ``|``-separated manifest cell into its stripped, non-empty items."""
    if cell is None:
        return []
    return [s.strip() for s in cell.split(LIST_SEP) if s.strip()]


def field_id(row: Mapping) -> str:
    """``"<dataset>/<cell_line>/<plate>/<well>/<field>"`` of a manifest row."""
    return "/".join(str(row[k]) for k in FIELD_KEY)


def _read_table(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise ManifestError("manifest not found", path=path,
                            expected="a CSV or Parquet file", received="no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            # Text first, types after: row-by-row type errors can then name the cell.
            return pl.read_csv(path, infer_schema=False,
                               separator="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # polars raises several types for malformed files
        raise ManifestError(f"cannot read the manifest ({type(exc).__name__}: {exc})",
                            path=path, expected="a well-formed CSV or Parquet table") from exc
    raise ManifestError("unknown manifest format", path=path,
                        expected="a .csv, .tsv or .parquet file", received=path.suffix or "no suffix")


def _typed_column(raw: pl.DataFrame, name: str, dtype: pl.DataType, path: Path) -> pl.Series:
    """The column cast to its schema type; raise naming the rows whose value does not fit."""
    src = raw[name]
    if src.dtype == pl.Utf8:
        src = src.str.strip_chars().replace("", None)
    if dtype == pl.Utf8:
        return src.cast(pl.Utf8).alias(name)
    if src.dtype.is_float():
        # A float column holding whole numbers (Parquet written from pandas) is fine.
        ok = src.is_null() | (src.is_nan().not_() & (src == src.round()))
        cast = src.cast(dtype, strict=False)
        if not ok.all():
            cast = cast.scatter((~ok).arg_true(), None)
    else:
        cast = src.cast(dtype, strict=False)
    bad = src.is_not_null() & cast.is_null()
    if bad.any():
        rows = raw["row"].filter(bad).to_list()
        values = src.filter(bad).to_list()
        shown = ", ".join(f"row {r}: {v!r}" for r, v in zip(rows[:_MAX_REPORTED], values, strict=False))
        more = f" (and {len(rows) - _MAX_REPORTED} more)" if len(rows) > _MAX_REPORTED else ""
        raise ManifestError(
            f"column {name!r} has values that are not {_type_name(dtype)}: {shown}{more}",
            path=path, row=rows[0], expected=_type_name(dtype), received=repr(values[0]),
        )
    return cast.alias(name)


def _check_required(df: pl.DataFrame, path: Path) -> None:
    for name in REQUIRED_COLUMNS:
        empty = df["row"].filter(df[name].is_null()).to_list()
        if empty:
            raise ManifestError(
                f"column {name!r} is empty in row(s) {_and(empty[:_MAX_REPORTED])}"
                + (f" (and {len(empty) - _MAX_REPORTED} more)" if len(empty) > _MAX_REPORTED else ""),
                path=path, row=empty[0], expected=f"a value in every row of {name!r}",
                received="an empty cell",
            )


def _type_name(dtype: pl.DataType) -> str:
    return "whole numbers" if dtype.is_integer() else "text"


def _and(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
