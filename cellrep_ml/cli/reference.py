"""``cellrep reference build|snapshot`` — build the reference annotations.

``build`` fetches GO.db, org.Hs.eg.db (Debian packages) and the efaar-benchmarking wheel
into a cache unless local files are given, and writes the full reference into the data
home (``make reference``). ``snapshot`` derives the small subset committed in the package.
"""

from __future__ import annotations

from pathlib import Path

import click

from cellrep_ml.config import data_home, reference_dir

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)


def _default_cache() -> Path:
    # Beside, not inside, the reference directory: the reference is swapped in as a whole.
    return data_home() / "cache" / "reference-sources"


@click.group()
def command() -> None:
    """Build the reference annotation snapshot (GO, KEGG, CORUM, gene pairs)."""


@command.command()
@click.option("--out", type=_DIR, default=None,
              help="Output directory  [default: <data home>/reference]")
@click.option("--cache", type=_DIR, default=None,
              help="Where downloaded sources are kept  [default: <data home>/cache/reference-sources]")
@click.option("--go-sqlite", type=_FILE, help="Local GO.db GO.sqlite (skips its download).")
@click.option("--orgdb-sqlite", type=_FILE,
              help="Local org.Hs.eg.db org.Hs.eg.sqlite (skips its download).")
@click.option("--efaar-wheel", type=_FILE, help="Local efaar_benchmarking wheel (skips its download).")
@click.option("--go-obo", type=_FILE, help="GO OBO file (plain or .gz) used instead of GO.db.")
@click.option("--gaf", type=_FILE, help="GAF 2.x file (plain or .gz) used instead of org.Hs.eg GO annotations.")
def build(
    out: Path | None,
    cache: Path | None,
    go_sqlite: Path | None,
    orgdb_sqlite: Path | None,
    efaar_wheel: Path | None,
    go_obo: Path | None,
    gaf: Path | None,
) -> None:
    """Fetch the sources (unless given) and write the full reference."""
    from cellrep_ml.annotations import build_reference, fetch_sources
    from cellrep_ml.errors import ReferenceDataError

    out = out or reference_dir()
    try:
        if orgdb_sqlite is None or efaar_wheel is None or (go_sqlite is None and go_obo is None):
            fetched = fetch_sources(cache or _default_cache())
            go_sqlite = go_sqlite or fetched.go_sqlite
            orgdb_sqlite = orgdb_sqlite or fetched.orgdb_sqlite
            efaar_wheel = efaar_wheel or fetched.efaar_wheel
        ref = build_reference(out, go_sqlite=go_sqlite, orgdb_sqlite=orgdb_sqlite,
                              efaar_wheel=efaar_wheel, go_obo=go_obo, gaf=gaf)
    except ReferenceDataError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"reference written to {out}")
    for table, n in ref.counts().items():
        click.echo(f"  {table:<17} {n:>9,d} rows")


@command.command()
@click.option("--from", "source", type=_DIR, default=None,
              help="Full reference to subset  [default: <data home>/reference]")
@click.option("--out", type=_DIR, required=True,
              help="Output directory, e.g. cellrep_ml/annotations/snapshot")
@click.option("--max-bytes", type=int, default=None,
              help="Size budget; BP annotations are trimmed to fit  [default: 3,000,000]")
def snapshot(source: Path | None, out: Path, max_bytes: int | None) -> None:
    """Derive the small snapshot (CORUM genes with CC terms + demo markers) from a full reference."""
    from cellrep_ml.annotations import Reference, write_snapshot
    from cellrep_ml.annotations.snapshot import MAX_SNAPSHOT_BYTES
    from cellrep_ml.errors import ReferenceDataError

    try:
        full = Reference.read(source or reference_dir())
        snap = write_snapshot(full, out, max_bytes=max_bytes or MAX_SNAPSHOT_BYTES)
    except (ReferenceDataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    click.echo(f"snapshot written to {out} ({size:,d} bytes, trim rule {snap.provenance['trim_rule']!r})")
    for table, n in snap.counts().items():
        click.echo(f"  {table:<17} {n:>9,d} rows")
