"""The inbox sensor: a new screen adds partitions and requests its runs, exactly once."""


import dagster as dg

from cellrep_assets.partitions import cell_line_partitions, dataset_partitions, screen_key
from cellrep_assets.resources import DataHome
from cellrep_assets.screens.assets import screen_job
from cellrep_assets.screens.inbox import dump_cursor, load_cursor, scan_inbox
from cellrep_ml.config import inbox_dir


@dg.sensor(
    job=screen_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches <CELLREP_HOME>/inbox for new screen manifests.",
)
def inbox_sensor(context: dg.SensorEvaluationContext, home: DataHome):
    inbox = inbox_dir(home.path)
    scan = scan_inbox(inbox, load_cursor(context.cursor), home=home.path)
    for manifest, why in scan.errors.items():
        context.log.error(f"skipped {manifest}: {why}")
    if not scan.screens:
        why = "; ".join(f"{m}: {e}" for m, e in scan.errors.items())
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"invalid screens: {why}" if why else f"no new screens in {inbox}"),
            cursor=dump_cursor(scan.cursor),
        )

    datasets = sorted({s.dataset_key for s in scan.screens})
    cell_lines = sorted({c for s in scan.screens for c in s.cell_line_keys})
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=screen.run_key(cell_line),
                partition_key=screen_key(screen.dataset_key, cell_line),
                tags={"cellrep/manifest": str(screen.manifest)},
            )
            for screen in scan.screens
            for cell_line in screen.cell_line_keys
        ],
        dynamic_partitions_requests=[
            dataset_partitions.build_add_request(datasets),
            cell_line_partitions.build_add_request(cell_lines),
        ],
        cursor=dump_cursor(scan.cursor),
    )
