"""``cellrep export`` — a feature table of the warehouse to AnnData (.h5ad) or Parquet."""

from __future__ import annotations

import click


@click.command()
@click.option("--table", "kind", type=click.Choice(["protein_features", "cell_embeddings"]),
              default="protein_features", show_default=True, help="Feature table to export.")
@click.option("--model", "model_name", required=True, help="Model name, e.g. pci.")
@click.option("--version", "model_version", default=None,
              help="Model version; default the one written most recently.")
@click.option("--dataset", default=None, help="Only this dataset; default all of the version.")
@click.option("--format", "fmt", type=click.Choice(["h5ad", "parquet"]), default=None,
              help="Output format; default from the suffix of --out.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write (atomically).")
def command(kind: str, model_name: str, model_version: str | None, dataset: str | None,
            fmt: str | None, out: str) -> None:
    """Export protein features or cell embeddings for scanpy (.h5ad) or pandas (.parquet).

    h5ad: X = vectors, obs = proteins (or cells) with their metadata, uns["cellrep"] =
    model name, version, normalisation. Parquet: metadata columns and the vector as a
    list of floats.
    """
    from cellrep_ml.export import export_features

    try:
        path, n = export_features(kind, model_name=model_name, model_version=model_version,
                                  dataset=dataset, fmt=fmt, out=out)
    except (LookupError, ValueError, FileNotFoundError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {n} rows of {kind} ({model_name}) to {path}")
