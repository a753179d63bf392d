"""``cellrep simulate`` — write a synthetic screen with ground truth."""

from __future__ import annotations

from pathlib import Path

import click

from cellrep_ml.simulate.presets import PRESETS


@click.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="opencell",
              show_default=True, help="Screen type: channels, optics, cell lines.")
@click.option("--proteins", "n_proteins", type=click.IntRange(min=1), default=24,
              show_default=True, help="Number of real genes (allen3d adds 5 controls).")
@click.option("--cell-lines", "n_cell_lines", type=click.IntRange(min=1), default=3,
              show_default=True, help="Number of cell lines of the preset.")
@click.option("--fields-per-protein", type=click.IntRange(min=1), default=4,
              show_default=True, help="Fields of view per well.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed, same screen (byte-identical images).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Screen folder to write (manifest.csv, screen.yaml, images/, ground_truth/).")
@click.option("--field-size", type=click.IntRange(min=16), default=None,
              help="Field width/height in pixels [default: the preset's].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: min(CPUs, 4)].")
@click.option("--dataset", default=None, help="Dataset name [default: sim-<preset>].")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar.")
def command(preset: str, n_proteins: int, n_cell_lines: int, fields_per_protein: int,
            seed: int, out: Path, field_size: int | None, workers: int | None,
            dataset: str | None, progress: bool) -> None:
    """Generate a synthetic screen with ground truth under OUT."""
    from cellrep_ml.simulate import simulate_screen

    try:
        res = simulate_screen(preset, out, n_proteins=n_proteins, n_cell_lines=n_cell_lines,
                              fields_per_protein=fields_per_protein, seed=seed,
                              field_size=field_size, workers=workers, progress=progress,
                              dataset=dataset)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"dataset {res.dataset}: {res.n_proteins} proteins x {len(res.cell_lines)} cell lines "
        f"({', '.join(res.cell_lines)}), {res.n_fields} fields, {res.n_cells} cells\n"
        f"{res.seconds:.1f} s, {res.fields_per_second:.1f} fields/s "
        f"({res.fields_per_second * 60:.0f} fields/min)\n"
        f"manifest     {res.manifest}\n"
        f"screen.yaml  {res.screen_yaml}\n"
        f"ground truth {res.ground_truth}"
    )
