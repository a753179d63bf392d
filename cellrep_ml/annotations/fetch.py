"""Obtain the reference sources: two Debian packages and one wheel, cached on disk.

* ``apt-get download r-bioc-go.db r-bioc-org.hs.eg.db`` then ``dpkg -x`` — the
  Bioconductor SQLite files, without installing R or touching the system;
* ``python -m pip download --no-deps efaar-benchmarking==1.0`` with the running
  interpreter's pip — the wheel is only read as a zip, never installed.

Each step is skipped when its result is already in the cache.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cellrep_ml.errors import ReferenceDataError

__all__ = ["DEBIAN_PACKAGES", "EFAAR_REQUIREMENT", "Sources", "fetch_sources"]

DEBIAN_PACKAGES: tuple[str, ...] = ("r-bioc-go.db", "r-bioc-org.hs.eg.db")
EFAAR_REQUIREMENT = "efaar-benchmarking==1.0"
_SITE = Path("usr/lib/R/site-library")
_GO_SQLITE = _SITE / "GO.db/extdata/GO.sqlite"
_ORGDB_SQLITE = _SITE / "org.Hs.eg.db/extdata/org.Hs.eg.sqlite"

Runner = Callable[..., object]


@dataclass(frozen=True)
class Sources:
    """Local paths of the three sources :func:`.build_reference` needs."""

    go_sqlite: Path
    orgdb_sqlite: Path
    efaar_wheel: Path


def _run(run: Runner, cmd: Sequence[str], cwd: Path) -> None:
    try:
        run(list(cmd), cwd=cwd, check=True)
    except FileNotFoundError as exc:
        raise ReferenceDataError(f"cannot fetch reference sources: {cmd[0]!r} not found ({exc})") from exc
    except subprocess.CalledProcessError as exc:
        raise ReferenceDataError(
            f"cannot fetch reference sources: `{' '.join(cmd)}` failed with exit code "
            f"{exc.returncode} in {cwd}"
        ) from exc


def _one(cache: Path, pattern: str) -> Path | None:
    found = sorted(cache.glob(pattern))
    return found[-1] if found else None


def fetch_sources(cache_dir: str | Path, *, run: Runner = subprocess.run) -> Sources:
    """Download and unpack the sources into ``cache_dir`` unless already there.

    Parameters
    ----------
    cache_dir : str or Path
        Folder for the ``.deb`` files, their extraction (``x/``) and the wheel.
    run : callable
        ``subprocess.run``-compatible function (replaced in tests).

    Returns
    -------
    Sources

    Raises
    ------
    ReferenceDataError
        A command is missing or fails, or an expected file is absent afterwards.
    """
    cache = Path(cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "x"
    debs = {pkg: _one(cache, f"{pkg}_*.deb") for pkg in DEBIAN_PACKAGES}
    needed = [pkg for pkg, deb in debs.items() if deb is None]
    if needed and not ((root / _GO_SQLITE).is_file() and (root / _ORGDB_SQLITE).is_file()):
        _run(run, ["apt-get", "download", *needed], cache)
        debs = {pkg: _one(cache, f"{pkg}_*.deb") for pkg in DEBIAN_PACKAGES}
    for pkg, target in zip(DEBIAN_PACKAGES, (_GO_SQLITE, _ORGDB_SQLITE), strict=True):
        if not (root / target).is_file():
            if debs[pkg] is None:
                raise ReferenceDataError(f"{cache}: no {pkg}_*.deb after `apt-get download`")
            _run(run, ["dpkg", "-x", str(debs[pkg]), str(root)], cache)
    wheel = _one(cache, "efaar_benchmarking-*.whl")
    if wheel is None:
        _run(run, [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache),
                   EFAAR_REQUIREMENT], cache)
        wheel = _one(cache, "efaar_benchmarking-*.whl")
    sources = Sources(root / _GO_SQLITE, root / _ORGDB_SQLITE, wheel or cache / "efaar_benchmarking.whl")
    for path in (sources.go_sqlite, sources.orgdb_sqlite, sources.efaar_wheel):
        if not path.is_file():
            raise ReferenceDataError(f"{path}: expected after fetching the reference sources, not found")
    return sources
