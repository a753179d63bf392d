"""Feature tables out of the warehouse, for scanpy (AnnData ``.h5ad``) and pandas (Parquet).

``.h5ad``: ``X`` (n, D) float32 = the vectors; ``obs`` = one row per protein (or cell)
with its metadata columns; ``var`` names the dimensions ``f0000`` …; ``uns`` records the
table, model name and version, dataset(s), normalisation(s) and statistic(s).

Parquet: the metadata columns and the vector as a ``list<float>`` column (``features``
or ``embedding``), with the same provenance in the file's key–value metadata
(``cellrep.*`` keys). Both are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import polars as pl

from cellrep_ml.embed._vectors import vectors_of
from cellrep_ml.io.atomic import atomic_path
from cellrep_ml.warehouse import VECTOR_COLUMN, read_features

__all__ = ["FORMATS", "export_features", "provenance", "to_anndata", "write_h5ad", "write_parquet"]

FORMATS = ("h5ad", "parquet")
Format = Literal["h5ad", "parquet"]

#: Row name of an exported row: the natural id, then what tells duplicates apart.
_ID_COLUMNS = {
    "protein_features": ("protein", "stat", "normalization", "dataset"),
    "cell_embeddings": ("cell_id", "normalization", "dataset"),
}


def provenance(frame: pl.DataFrame, kind: str) -> dict[str, str | list[str]]:
    """What an exported table is: kind, model, version(s), dataset(s), normalisation(s)."""
    dtype = frame.schema[VECTOR_COLUMN[kind]]
    dim = dtype.size if isinstance(dtype, pl.Array) else vectors_of(frame, VECTOR_COLUMN[kind]).shape[1]
    meta: dict[str, str | list[str]] = {"table": kind, "dim": str(dim)}
    for col in ("model_name", "model_version", "dataset", "normalization", "stat"):
        if col in frame.columns:
            values = sorted(frame.get_column(col).unique().to_list())
            meta[col] = values[0] if len(values) == 1 else values
    return meta


def _row_names(frame: pl.DataFrame, kind: str) -> list[str]:
    """Unique row names: the id column, joined with the fewest columns that make it unique."""
    cols = [c for c in _ID_COLUMNS[kind] if c in frame.columns]
    for k in range(1, len(cols) + 1):
        names = frame.select(pl.concat_str([pl.col(c).cast(pl.Utf8) for c in cols[:k]],
                                           separator="|")).to_series()
        if names.n_unique() == frame.height:
            return names.to_list()
    return [f"{name}|{i}" for i, name in enumerate(names.to_list())]


def to_anndata(frame: pl.DataFrame, kind: str):
    """An ``anndata.AnnData`` of a feature table read by :func:`read_features`.

    Returns
    -------
    anndata.AnnData
        ``X`` (n, D) float32; ``obs`` the metadata columns (strings as categoricals),
        indexed by protein (or cell id, made unique with stat/normalisation if needed);
        ``uns["cellrep"]`` the provenance.
    """
    import anndata as ad
    import pandas as pd

    vec = VECTOR_COLUMN[kind]
    x = vectors_of(frame, vec)
    obs = frame.drop(vec).to_pandas()
    for col in obs.columns:
        if obs[col].dtype == object or pd.api.types.is_string_dtype(obs[col]):
            obs[col] = obs[col].astype("category")
    obs.index = pd.Index(_row_names(frame, kind), name="obs_names", dtype=str)
    var = pd.DataFrame(index=pd.Index([f"f{i:04d}" for i in range(x.shape[1])], dtype=str))
    return ad.AnnData(X=x, obs=obs, var=var, uns={"cellrep": provenance(frame, kind)})


def write_h5ad(frame: pl.DataFrame, kind: str, out: str | Path) -> Path:
    """Write a feature table as AnnData ``.h5ad``, atomically."""
    adata = to_anndata(frame, kind)
    out = Path(out)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    return out


def write_parquet(frame: pl.DataFrame, kind: str, out: str | Path) -> Path:
    """Write a feature table as Parquet (vector as ``list<float>``), atomically."""
    import pyarrow.parquet as pq

    vec = VECTOR_COLUMN[kind]
    table = frame.with_columns(pl.col(vec).cast(pl.List(pl.Float32))).to_arrow()
    meta = {f"cellrep.{k}": json.dumps(v) for k, v in provenance(frame, kind).items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def export_features(
    kind: str,
    *,
    model_name: str,
    out: str | Path,
    fmt: Format | None = None,
    model_version: str | None = None,
    dataset: str | None = None,
    path: str | Path | None = None,
) -> tuple[Path, int]:
    """Export one model's ``protein_features`` or ``cell_embeddings`` to a file.

    Parameters
    ----------
    kind : {"protein_features", "cell_embeddings"}
    model_name : str
    out : str or Path
        The file written (its folder is created).
    fmt : {"h5ad", "parquet"}, optional
        Default from the suffix of ``out``.
    model_version : str, optional
        Default: the version written most recently.
    dataset : str, optional
        Default: every dataset of that version.
    path : str or Path, optional
        Warehouse file; default ``warehouse_path()``.

    Returns
    -------
    (Path, int)
        The file and the number of rows exported.

    Raises
    ------
    ValueError
        On an unknown format, or one that cannot be told from ``out``.
    LookupError
        If the warehouse holds nothing for the model.
    """
    out = Path(out)
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (from {out.name!r}); expected one of "
                         f"{FORMATS}")
    frame = read_features(kind, model_name=model_name, model_version=model_version,
                          dataset=dataset, path=path)
    writer = write_h5ad if fmt == "h5ad" else write_parquet
    return writer(frame, kind, out), frame.height
