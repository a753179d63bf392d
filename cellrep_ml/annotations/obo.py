"""Parser for the Gene Ontology in OBO 1.2 format (``go.obo``, ``go-basic.obo``).

Only ``[Term]`` stanzas are read; ``[Typedef]`` and header lines are skipped. Of the
relations, ``is_a`` and ``relationship: part_of`` are kept (see :data:`schema.RELATIONS`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cellrep_ml.annotations._textio import open_text
from cellrep_ml.annotations.schema import SCHEMAS, validate
from cellrep_ml.errors import ReferenceDataError

__all__ = ["read_obo"]

_NAMESPACE = {
    "cellular_component": "CC",
    "biological_process": "BP",
    "molecular_function": "MF",
}


def _value(line: str) -> str:
    """The value of an OBO tag line, without trailing ``! comment`` or ``{qualifiers}``."""
    value = line.split(":", 1)[1]
    value = value.split(" ! ", 1)[0]
    if value.rstrip().endswith("}") and " {" in value:
        value = value.rsplit(" {", 1)[0]
    return value.strip()


def read_obo(path: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read terms and edges from an OBO file (plain or gzip).

    Parameters
    ----------
    path : str or Path
        The ontology file.

    Returns
    -------
    terms : pl.DataFrame
        ``go_id, name, namespace, is_obsolete`` — every term, obsolete ones flagged.
    edges : pl.DataFrame
        ``child, parent, relation`` (the ``go_edges`` schema), from live terms only.

    Raises
    ------
    ReferenceDataError
        A term lacks an id, name or namespace, or has an unknown namespace.
    """
    terms: list[dict] = []
    edges: list[tuple[str, str, str]] = []
    current: dict | None = None
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if line.startswith("["):
                current = {"edges": [], "is_obsolete": False, "line": lineno}
                if line == "[Term]":
                    terms.append(current)
                continue
            if current is None or not line or line.startswith("!") or ":" not in line:
                continue
            tag = line.split(":", 1)[0]
            if tag == "id":
                current["go_id"] = _value(line)
            elif tag == "name":
                # Names are free text: no trailing comment to strip, and "!" may occur.
                current["name"] = line.split(":", 1)[1].strip()
            elif tag == "namespace":
                current["namespace"] = _value(line)
            elif tag == "is_obsolete":
                current["is_obsolete"] = _value(line) == "true"
            elif tag == "is_a":
                current["edges"].append((_value(line), "is_a"))
            elif tag == "relationship":
                rel, _, target = _value(line).partition(" ")
                if rel == "part_of":
                    current["edges"].append((target.strip(), "part_of"))
    rows = []
    for term in terms:
        for key in ("go_id", "name", "namespace"):
            if key not in term:
                raise ReferenceDataError(
                    f"{path}: [Term] stanza at line {term['line']} has no '{key}:' tag"
                )
        if term["namespace"] not in _NAMESPACE:
            raise ReferenceDataError(
                f"{path}: term {term['go_id']} (line {term['line']}) has namespace "
                f"{term['namespace']!r}; expected one of {sorted(_NAMESPACE)}"
            )
        rows.append((term["go_id"], term["name"], _NAMESPACE[term["namespace"]], term["is_obsolete"]))
        if not term["is_obsolete"]:
            edges.extend((term["go_id"], parent, rel) for parent, rel in term["edges"])
    terms_df = pl.DataFrame(
        rows,
        schema={"go_id": pl.String, "name": pl.String, "namespace": pl.String, "is_obsolete": pl.Boolean},
        orient="row",
    )
    edges_df = pl.DataFrame(edges, schema=SCHEMAS["go_edges"], orient="row").unique(maintain_order=True)
    return terms_df, validate(edges_df, "go_edges", path)
