"""The reference annotation tables as one object, and where to find a built one.

A reference directory holds one Parquet file per table of :mod:`.schema` plus
``reference.json`` (provenance: source package versions, build date, row counts, and any
rule used to trim it). Two exist:

* the *full* reference, built by ``cellrep reference build`` into the data home;
* the *snapshot*, a small subset committed in this package so that tests and demos work
  offline (``cellrep reference snapshot``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from cellrep_ml.annotations.propagate import propagate
from cellrep_ml.annotations.schema import SCHEMAS, validate
from cellrep_ml.config import reference_dir
from cellrep_ml.errors import ReferenceDataError
from cellrep_ml.io.atomic import atomic_path

__all__ = ["MANIFEST", "TABLES", "Reference", "load_reference", "snapshot_dir"]

#: Table names, in the order they are written.
TABLES: tuple[str, ...] = tuple(SCHEMAS)
#: Provenance file of a reference directory; its presence marks a complete build.
MANIFEST = "reference.json"
# zstd at a high level: written once, read often, and the snapshot is committed to git.
_ZSTD_LEVEL = 19


def snapshot_dir() -> Path:
    """The small snapshot shipped inside the package (``cellrep_ml/annotations/snapshot``)."""
    return Path(__file__).resolve().parent / "snapshot"


@dataclass
class Reference:
    """Reference annotations: GO terms and edges, gene annotations, KEGG, complexes, pairs.

    Attributes
    ----------
    go_terms, go_edges, gene_annotations, kegg, complexes, gene_pairs : pl.DataFrame
        The tables described in :mod:`cellrep_ml.annotations.schema`;
        ``gene_annotations`` holds *direct* annotations only.
    provenance : dict
        Contents of ``reference.json`` (sources, versions, build date, counts, rules).
    """

    go_terms: pl.DataFrame
    go_edges: pl.DataFrame
    gene_annotations: pl.DataFrame
    kegg: pl.DataFrame
    complexes: pl.DataFrame
    gene_pairs: pl.DataFrame
    provenance: dict = field(default_factory=dict)
    _cc: dict[str, frozenset[str]] | None = field(default=None, init=False, repr=False, compare=False)
    _names: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for table in TABLES:
            setattr(self, table, validate(getattr(self, table), table, f"Reference.{table}"))

    # ------------------------------------------------------------------ files
    @classmethod
    def read(cls, path: str | Path) -> Reference:
        """Read a reference directory written by :meth:`write`.

        Raises
        ------
        ReferenceDataError
            ``reference.json`` or a table file is missing or unreadable.
        """
        path = Path(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ReferenceDataError(
                f"{manifest}: not found; expected a reference built by `cellrep reference build`"
            )
        try:
            provenance = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReferenceDataError(f"{manifest}: invalid JSON ({exc})") from exc
        tables = {}
        for table in TABLES:
            file = path / f"{table}.parquet"
            if not file.is_file():
                raise ReferenceDataError(f"{file}: table file missing from reference {path}")
            try:
                tables[table] = validate(pl.read_parquet(file), table, file)
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise ReferenceDataError(f"{file}: unreadable Parquet ({exc})") from exc
        return cls(**tables, provenance=provenance)

    def counts(self) -> dict[str, int]:
        """Row count of every table."""
        return {table: getattr(self, table).height for table in TABLES}

    def write(self, path: str | Path) -> Path:
        """Write every table as zstd Parquet plus ``reference.json``, atomically.

        The whole directory is assembled beside ``path`` and swapped in at once, so a
        reader never sees a half-written reference. ``provenance`` is written with the
        current row counts under ``"counts"``.
        """
        path = Path(path)
        provenance = {**self.provenance, "counts": self.counts()}
        provenance.setdefault("built_at", datetime.now(UTC).isoformat(timespec="seconds"))
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            for table in TABLES:
                getattr(self, table).write_parquet(
                    tmp / f"{table}.parquet", compression="zstd", compression_level=_ZSTD_LEVEL
                )
            (tmp / MANIFEST).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        self.provenance = provenance
        return path

    # ---------------------------------------------------------------- queries
    def propagated(self, namespace: str | None = None) -> pl.DataFrame:
        """Gene annotations with every ancestor term added (see :func:`.propagate`)."""
        ann = self.gene_annotations
        if namespace is not None:
            ann = ann.filter(pl.col("namespace") == namespace)
        return propagate(ann, self.go_edges)

    def _cc_map(self) -> dict[str, frozenset[str]]:
        if self._cc is None:
            cc = self.propagated("CC").group_by("gene").agg(pl.col("go_id").unique())
            self._cc = {gene: frozenset(terms) for gene, terms in cc.iter_rows()}
        return self._cc

    def cc_terms(self, gene: str, propagated: bool = True) -> set[str]:
        """GO cellular-component terms of ``gene`` (empty if it has none).

        Parameters
        ----------
        gene : str
            Gene symbol, e.g. ``'SEC61B'``.
        propagated : bool
            Include every ancestor along ``is_a``/``part_of`` (default), or only the
            direct annotations.
        """
        if propagated:
            return set(self._cc_map().get(gene, ()))
        direct = self.gene_annotations.filter(
            (pl.col("gene") == gene) & (pl.col("namespace") == "CC")
        )
        return set(direct["go_id"].to_list())

    def genes_with_cc(self) -> list[str]:
        """Sorted gene symbols with at least one CC annotation."""
        genes = self.gene_annotations.filter(pl.col("namespace") == "CC")["gene"]
        return genes.unique().sort().to_list()

    def term_name(self, go_id: str) -> str:
        """The name of a GO term, e.g. ``'GO:0005783'`` → ``'endoplasmic reticulum'``.

        Raises
        ------
        KeyError
            The term is not in this reference.
        """
        if self._names is None:
            self._names = dict(self.go_terms.select("go_id", "name").iter_rows())
        try:
            return self._names[go_id]
        except KeyError:
            raise KeyError(f"GO term {go_id!r} is not in this reference") from None


def load_reference(path: str | Path | None = None) -> Reference:
    """Load reference annotations.

    Parameters
    ----------
    path : str or Path, optional
        A reference directory. By default the full reference in the data home
        (:func:`cellrep_ml.config.reference_dir`) when one has been built there, else
        the small snapshot shipped with the package.

    Raises
    ------
    ReferenceDataError
        ``path`` does not hold a complete reference.
    """
    if path is None:
        home = reference_dir()
        path = home if (home / MANIFEST).is_file() else snapshot_dir()
    return Reference.read(path)
