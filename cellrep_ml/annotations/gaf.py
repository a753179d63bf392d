"""Reader for GO Annotation Files, GAF 2.x (e.g. ``goa_human.gaf.gz``).

GAF is tab-separated with 17 columns and ``!`` comment lines. Used columns (1-based):
3 DB_Object_Symbol, 4 Qualifier, 5 GO ID, 7 Evidence Code, 9 Aspect (P, F or C).
Rows whose qualifier contains ``NOT`` state that the gene is *not* found there and are
skipped.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cellrep_ml.annotations._textio import open_text
from cellrep_ml.annotations.schema import SCHEMAS, validate
from cellrep_ml.errors import ReferenceDataError

__all__ = ["read_gaf"]

_ASPECT = {"C": "CC", "P": "BP", "F": "MF"}
_MIN_COLUMNS = 15  # GAF 2.x has 17; 15 are mandatory up to the assigned-by column


def read_gaf(path: str | Path) -> pl.DataFrame:
    """Read direct gene annotations from a GAF 2.x file (plain or gzip).

    Parameters
    ----------
    path : str or Path
        The annotation file.

    Returns
    -------
    pl.DataFrame
        ``gene, go_id, namespace, evidence`` (``gene_annotations`` schema), deduplicated.

    Raises
    ------
    ReferenceDataError
        A data line has too few columns or an unknown aspect.
    """
    rows: list[tuple[str, str, str, str]] = []
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.startswith("!") or not raw.strip():
                continue
            cols = raw.rstrip("\n").split("\t")
            if len(cols) < _MIN_COLUMNS:
                raise ReferenceDataError(
                    f"{path}, line {lineno}: expected at least {_MIN_COLUMNS} tab-separated "
                    f"GAF columns, got {len(cols)}"
                )
            qualifiers = cols[3].split("|")
            if "NOT" in qualifiers:
                continue
            aspect = cols[8].strip()
            if aspect not in _ASPECT:
                raise ReferenceDataError(
                    f"{path}, line {lineno}: aspect should be one of P, F, C; got {aspect!r}"
                )
            rows.append((cols[2].strip(), cols[4].strip(), _ASPECT[aspect], cols[6].strip()))
    df = pl.DataFrame(rows, schema=SCHEMAS["gene_annotations"], orient="row")
    return validate(df.unique(maintain_order=True), "gene_annotations", path)
