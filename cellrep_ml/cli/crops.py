"""``cellrep crops DATASET``: segment nuclei and write single-cell crops per cell line."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cellrep_ml.errors import CellrepError

# Exit codes: 0 crops written; 1 a cell line could not be cropped (bad field, no field
# index); 2 the screen is not registered or its description is invalid.
EXIT_PARTITION_FAILED = 1
EXIT_INVALID_SCREEN = 2


@click.command(name="crops")
@click.argument("dataset")
@click.option("--cell-line", "cell_lines", multiple=True, metavar="NAME",
              help="Crop only this cell line (repeatable); every ingested one by default.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data home (default: $CELLREP_HOME or ./.cellrep).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the train/val/test split by field of view.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes reading and segmenting fields.")
def command(dataset: str, cell_lines: tuple[str, ...], home: Path | None, seed: int,
            workers: int) -> None:
    """Segment nuclei and write QC'd single-cell crops of an ingested DATASET.

    Reads each cell line's field index (written by `cellrep ingest`), segments the
    screen's segmentation channel, and writes crops.zarr, cells.parquet and qc.json
    under <home>/crops/<dataset>/<cell line>/.
    """
    import polars as pl

    from cellrep_ml.config import crops_dir, raw_dir
    from cellrep_ml.io.registry import get_screen
    from cellrep_ml.io.screen_config import ScreenConfig
    from cellrep_ml.segment import crop_partition

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        record = get_screen(dataset, home=home)
        config = ScreenConfig.read(record.config_path)
    except CellrepError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_INVALID_SCREEN) from None

    wanted = list(cell_lines) or list(record.cell_lines)
    unknown = sorted(set(wanted) - set(record.cell_lines))
    if unknown:
        click.echo(f"error: cell line(s) {unknown} not in screen {record.dataset!r}; "
                   f"it has {list(record.cell_lines)}", err=True)
        raise SystemExit(EXIT_INVALID_SCREEN)

    failed = []
    click.echo(f"{'cell line':<16} {'fields kept':>11} {'cells':>8} {'rejected':>9} {'cells/s':>8}")
    for cell_line in wanted:
        fields_path = raw_dir(record.dataset, cell_line, home) / "fields.parquet"
        if not fields_path.is_file():
            click.echo(f"error: no field index for {record.dataset}/{cell_line} at {fields_path}; "
                       "run `cellrep ingest` first", err=True)
            failed.append(cell_line)
            continue
        try:
            result = crop_partition(
                pl.read_parquet(fields_path), config, crops_dir(record.dataset, cell_line, home),
                seed=seed, workers=workers, progress=True,
            )
        except (CellrepError, OSError, ValueError) as exc:
            click.echo(f"error: {record.dataset}/{cell_line}: {exc}", err=True)
            failed.append(cell_line)
            continue
        kept = f"{result.n_fields_kept}/{result.n_fields}"
        click.echo(f"{cell_line:<16} {kept:>11} {result.n_cells:>8} "
                   f"{sum(result.rejected.values()):>9} {result.cells_per_s:>8.0f}")
        reasons = ", ".join(f"{k} {v}" for k, v in result.rejected.items() if v)
        if reasons:
            click.echo(f"  rejected: {reasons}")
        click.echo(f"  store: {result.store_path}")
    if failed:
        raise SystemExit(EXIT_PARTITION_FAILED)
