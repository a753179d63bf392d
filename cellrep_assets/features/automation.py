"""Keeping embeddings fresh: new crops, a new champion, and a nightly re-embedding.

Three triggers, each doing one thing:

- **New screens** arrive through the inbox sensor, which materializes raw_screen →
  cell_crops. ``cell_embeddings`` is *eager on new crops*: declarative automation embeds
  each new partition as soon as its crops and the dataset's champion exist, and
  everything downstream follows eagerly (:data:`DOWNSTREAM`).
- **A new champion** (moved by the champion/<method> benchmark asset, or by a person in
  the MLflow UI) is noticed by :func:`champion_sensor`, which re-embeds every cell line of
  that dataset whose warehouse rows come from another version. The embeddings'
  automation condition ignores the champion asset so that a benchmark run that keeps the
  incumbent does not re-embed anything.
- **Nightly** (cron ``$CELLREP_REEMBED_CRON``, default 03:00), :func:`nightly_reembedding`
  re-embeds every partition with every method that has a model, e.g. to pick up a new
  normalisation or code version.

Runs are per dataset × cell-line partition; the dataset-level assets downstream (protein
features, evaluations, clusters, enrichment) follow through their eager conditions, since
one Dagster run holds one partition key.
"""

# No `from __future__ import annotations`: Dagster reads resource annotations at definition time.

import json
import os

import dagster as dg

from cellrep_assets.features.conditions import embeddings_key
from cellrep_assets.features.methods import BASELINES, FEATURE_METHODS, TRAINED_METHODS
from cellrep_assets.partitions import screen_key
from cellrep_assets.resources import DataHome
from cellrep_ml.config import crops_dir, partition_key, warehouse_path

#: cron of the nightly re-embedding, from the environment of the code location.
REEMBED_CRON = os.environ.get("CELLREP_REEMBED_CRON", "0 3 * * *")


def _embedded_version(home, method: str, dataset: str, cell_line: str) -> str | None:
    """Model version of the partition's rows in the warehouse, None if not embedded."""
    from cellrep_ml.warehouse import read_table

    if not warehouse_path(home).is_file():
        return None
    rows = read_table(
        "SELECT model_version FROM feature_partitions WHERE kind = 'cell_embeddings' "
        "AND model_name = $m AND dataset = $d AND cell_line = $c ORDER BY written_at DESC LIMIT 1",
        {"m": method, "d": dataset, "c": cell_line}, path=warehouse_path(home))
    return rows["model_version"][0] if rows.height else None


def _cropped_lines(record, home) -> list[str]:
    return [c for c in record.cell_lines
            if (crops_dir(record.dataset, c, home) / "cells.parquet").is_file()]


def champion_requests(home, cursor: dict[str, str]) -> tuple[list[dg.RunRequest], dict[str, str]]:
    """Run requests for partitions embedded with another version than the champion."""
    from cellrep_ml import model_registry as mr
    from cellrep_ml.io.registry import list_screens

    requests, seen = [], dict(cursor)
    for record in list_screens(home=home):
        dkey = partition_key(record.dataset)
        for method in TRAINED_METHODS:
            champion = mr.champion_version(record.dataset, method, home=home)
            name = f"{dkey}/{method}"
            if champion is None or seen.get(name) == champion:
                continue
            for line in _cropped_lines(record, home):
                if _embedded_version(home, method, record.dataset, line) == champion:
                    continue
                requests.append(dg.RunRequest(
                    run_key=f"{name}/{partition_key(line)}@{champion}",
                    asset_selection=[embeddings_key(method)],
                    partition_key=screen_key(dkey, partition_key(line)),
                    tags={"cellrep/trigger": "champion", "cellrep/model_version": champion},
                ))
            seen[name] = champion
    return requests, seen


@dg.sensor(
    name="champion_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[embeddings_key(m) for m in TRAINED_METHODS],
    description="Re-embeds a dataset when the MLflow alias 'champion' of one of its models moves.",
)
def champion_sensor(context: dg.SensorEvaluationContext, home: DataHome):
    requests, cursor = champion_requests(home.path, json.loads(context.cursor or "{}"))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def nightly_requests(home) -> list[dg.RunRequest]:
    """One run per dataset × cell line with crops: every method that has a model."""
    from cellrep_ml import model_registry as mr
    from cellrep_ml.io.registry import list_screens

    requests = []
    for record in list_screens(home=home):
        methods = list(BASELINES)
        for method in TRAINED_METHODS:
            try:
                mr.choose_version(record.dataset, method, home=home)
                methods.append(method)
            except LookupError:
                continue
        for line in _cropped_lines(record, home):
            requests.append(dg.RunRequest(
                asset_selection=[embeddings_key(m) for m in FEATURE_METHODS if m in methods],
                partition_key=screen_key(partition_key(record.dataset), partition_key(line)),
                tags={"cellrep/trigger": "nightly"},
            ))
    return requests


@dg.schedule(
    name="nightly_reembedding",
    cron_schedule=REEMBED_CRON,
    target=dg.AssetSelection.assets(*[embeddings_key(m) for m in FEATURE_METHODS]),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-embeds every screen partition with every model (cron $CELLREP_REEMBED_CRON).",
)
def nightly_reembedding(context: dg.ScheduleEvaluationContext, home: DataHome):
    return nightly_requests(home.path)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "cellrep_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions (new crops → embeddings → ...).",
)
