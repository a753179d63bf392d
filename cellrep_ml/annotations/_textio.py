"""Open annotation text files whether or not they are gzip-compressed."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO

from cellrep_ml.errors import ReferenceDataError

_GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: str | Path) -> IO[str]:
    """Open ``path`` for reading as UTF-8 text, decompressing gzip when present.

    The gzip test reads the magic bytes rather than trusting the suffix, because
    ontology files are often served compressed under a plain name.

    Raises
    ------
    ReferenceDataError
        The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceDataError(f"{path}: file not found")
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8")
