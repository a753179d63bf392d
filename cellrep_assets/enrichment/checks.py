"""Asset check on the enrichment mart: on simulated screens, clusters recover the compartments."""

# No `from __future__ import annotations`: Dagster reads resource annotations at definition time.

import dagster as dg

from cellrep_assets.resources import DataHome
from cellrep_ml.config import warehouse_path

#: A simulated dataset passes when one of its clusterings recovers at least this share of
#: its compartments (those with >= MIN_PROTEINS proteins).
MIN_RECOVERY = 0.5
MIN_PROTEINS = 3


def _truth(record):
    """protein, compartment (primary = rendered with the highest weight) of a simulated screen,
    or None when the screen has no simulator ground truth."""
    import polars as pl

    path = record.manifest_path.parent / "ground_truth" / "proteins.parquet"
    if not path.is_file():
        return None
    gt = pl.read_parquet(path, columns=["protein", "compartments"])
    return gt.select("protein", compartment=pl.col("compartments").list.first()).drop_nulls()


def _table(rows) -> dg.MetadataValue:
    lines = ["| dataset | model | version | cut | recovered | compartments | share |",
             "|---|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['model_name']} | {r['model_version']} | {r['cut']} | "
              f"{r['recovered']} | {r['compartments']} | {r['share']:.2f} |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset_check(
    asset=dg.AssetKey(["enriched_terms"]),
    name="recovers_simulated_compartments",
    additional_deps=[dg.AssetKey(["protein_clusters"])],
    description=f"On simulated screens, some clustering of each dataset is enriched in the GO "
                f"CC term of at least {MIN_RECOVERY:.0%} of the compartments its proteins were "
                f"rendered from (simulator ground truth).",
)
def recovers_simulated_compartments(context: dg.AssetCheckExecutionContext,
                                    home: DataHome) -> dg.AssetCheckResult:
    """Compare enriched terms with the simulator's compartments (see cellrep_ml.enrichment)."""
    import polars as pl

    from cellrep_ml.enrichment import compartment_recovery
    from cellrep_ml.errors import UnknownScreenError
    from cellrep_ml.io.registry import get_screen
    from cellrep_ml.simulate import PATTERN_GO
    from cellrep_ml.warehouse import read_table

    path = warehouse_path(home.path)
    clusters = read_table("protein_clusters", path=path)
    enriched = read_table("enriched_terms", path=path)
    per_clustering, best, not_simulated = [], {}, []
    for dataset in sorted(clusters["dataset"].unique().to_list()):
        try:
            truth = _truth(get_screen(dataset, home=home.path))
        except UnknownScreenError:
            truth = None
        if truth is None:
            not_simulated.append(dataset)
            continue
        rec = compartment_recovery(clusters.filter(pl.col("dataset") == dataset),
                                   enriched.filter(pl.col("dataset") == dataset), truth,
                                   PATTERN_GO, min_proteins=MIN_PROTEINS)
        summary = (rec.group_by("model_name", "model_version", "dataset", "cut")
                   .agg(recovered=pl.col("recovered").sum(), compartments=pl.len())
                   .with_columns(share=pl.col("recovered") / pl.col("compartments"))
                   .sort("share", "model_name", "cut", descending=[True, False, False]))
        per_clustering += summary.to_dicts()
        best[dataset] = float(summary["share"].max()) if summary.height else 0.0
    if not best:
        return dg.AssetCheckResult(passed=True, metadata={
            "not_applicable": "no clustered dataset has simulator ground truth",
            "datasets_without_ground_truth": dg.MetadataValue.json(not_simulated)})
    failing = {d: s for d, s in best.items() if s < MIN_RECOVERY}
    return dg.AssetCheckResult(
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"best share of compartments recovered per dataset: {best}"
                     + (f"; below {MIN_RECOVERY}: {sorted(failing)}" if failing else "")),
        metadata={
            "best_share": dg.MetadataValue.json(best),
            "clusterings": _table(per_clustering),
            "datasets_without_ground_truth": dg.MetadataValue.json(not_simulated),
        },
    )
