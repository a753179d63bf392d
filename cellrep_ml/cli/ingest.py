"""``cellrep ingest MANIFEST``: register a screen and validate its fields."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cellrep_ml.errors import CellrepError

# Exit codes: 0 something ingested; 1 a whole partition quarantined; 2 the manifest or
# screen description is invalid (nothing could be ingested).
EXIT_PARTITION_FAILED = 1
EXIT_INVALID_SCREEN = 2


@click.command(name="ingest")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cell-line", "cell_lines", multiple=True, metavar="NAME",
              help="Ingest only this cell line (repeatable); all of the manifest's by default.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data home (default: $CELLREP_HOME or ./.cellrep).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Threads reading fields (default: min(8, 2 x CPUs)).")
@click.option("--force", is_flag=True, help="Re-validate even if nothing changed.")
def command(manifest: Path, cell_lines: tuple[str, ...], home: Path | None,
            workers: int | None, force: bool) -> None:
    """Validate and register the screen described by MANIFEST.

    MANIFEST is a CSV or Parquet file, one row per field of view, with screen.yaml in
    the same folder. Every field is checked (files present and readable, channels,
    dimensionality, pixel type, not blank); bad fields are quarantined with their reason
    and the rest is ingested into the data home. Exits non-zero when the manifest is
    invalid or every field of a cell line is bad.
    """
    from cellrep_ml.io.ingest import ingest_screen

    # tifffile logs every broken file it meets; the quarantine reasons printed below say
    # the same once, with the manifest row.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        results = ingest_screen(manifest, home=home, cell_lines=cell_lines or None,
                                workers=workers, force=force, progress=True)
    except CellrepError as exc:
        click.echo(f"error: invalid screen: {exc}", err=True)
        raise SystemExit(EXIT_INVALID_SCREEN) from None

    width = max([len("cell line"), *(len(r.cell_line) for r in results)])
    click.echo(f"{'cell line':<{width}}  {'fields ok':>9}  {'quarantined':>11}  status")
    for r in results:
        status = "unchanged" if r.skipped else "ingested"
        if r.all_quarantined:
            status = "FAILED: every field quarantined"
        click.echo(f"{r.cell_line:<{width}}  {r.n_fields:>9}  {r.n_quarantined:>11}  {status}")
    for r in results:
        if r.reasons:
            click.echo(f"\nquarantined in {r.dataset}/{r.cell_line} ({r.quarantine_path}):")
            for reason in r.reasons:
                click.echo(f"  - {reason}")
    failed = [r.cell_line for r in results if r.all_quarantined]
    if failed:
        click.echo(f"error: every field of cell line(s) {failed} was quarantined; "
                   "fix the files above and run again", err=True)
        raise SystemExit(EXIT_PARTITION_FAILED)
    if results:
        click.echo(f"\nfield index: {results[0].out_dir.parent}/<cell line>/fields.parquet")
