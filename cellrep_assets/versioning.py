"""Versioned publishing: the ``store`` resource and the sensor that merges successful runs.

Each run publishes what its assets wrote on its own branch (``run-<root run id>``) and
commits with the run id, partition, code version and asset key; the asset's Dagster data
version is the commit that last changed its data. ``merge_successful_runs`` merges a
run's branch into ``main`` once the run succeeded — blocking checks that fail fail the
run, so a run whose data did not pass never reaches ``main``; its branch stays for
inspection. Re-executions share the root run's branch, so a retried failure continues
where it stopped.
"""

# No `from __future__ import annotations` here: Dagster reads the resource annotations of
# the sensor function at definition time and cannot resolve them as strings.

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from cellrep_assets.resources import DataHome
from cellrep_ml.config import versions_dir
from cellrep_ml.settings import LakeFSSettings
from cellrep_ml.versioning import VersionedStore, branch_name, commit_metadata
from cellrep_ml.versioning.base import RUN_BRANCH_PREFIX
from cellrep_ml.versioning.local import LocalStore

BACKENDS = ("local", "lakefs")


class DataStore(dg.ConfigurableResource):
    """Where asset outputs are versioned: ``local`` (ledger in the data home) or ``lakefs``."""

    backend: str = "local"
    """``local`` (default, zero setup) or ``lakefs``."""
    host: str = ""
    """lakeFS endpoint, e.g. ``http://lakefs:8000`` (lakefs only)."""
    repo: str = ""
    """lakeFS repository (lakefs only); it must exist with branch ``main_branch``."""
    access_key_id: str = ""
    """lakeFS access key id; pass ``dg.EnvVar("LAKEFS_ACCESS_KEY_ID")``."""
    secret_access_key: str = ""
    """lakeFS secret key; pass ``dg.EnvVar("LAKEFS_SECRET_ACCESS_KEY")``."""
    main_branch: str = "main"
    """Branch runs start from and merge into."""

    def open(self, home: Path) -> VersionedStore:
        """The store for data home ``home`` (the local ledger lives in ``<home>/versions``)."""
        if self.backend == "local":
            return LocalStore(home, main=self.main_branch)
        if self.backend == "lakefs":
            from cellrep_ml.versioning.lakefs_store import LakeFSStore

            return LakeFSStore(self.host, self.repo, access_key_id=self.access_key_id,
                               secret_access_key=self.secret_access_key, main=self.main_branch,
                               cache_dir=versions_dir(Path(home)) / "cache")
        raise ValueError(f"DataStore.backend is {self.backend!r}; expected one of {BACKENDS}")

    def publish(self, context: dg.AssetExecutionContext, home: Path, output: Path, *,
                data_files: Sequence[str] = ()) -> tuple[dg.DataVersion, dict]:
        """Publish ``output`` (a folder under ``home``) on the run's branch and commit it.

        Returns the data version (the commit that last changed ``data_files`` of the
        folder, or the folder when none are named) and metadata naming commit and branch.
        """
        home = Path(home).resolve()
        output = Path(output).resolve()
        if not output.is_relative_to(home):
            raise ValueError(f"cannot publish {output}: it is not inside the data home {home}")
        key = output.relative_to(home).as_posix()
        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else None
        code_version = context.assets_def.code_versions_by_key.get(context.asset_key)
        run = context.run
        metadata = commit_metadata(run_id=run.run_id, partition=partition,
                                   code_version=code_version, asset_key=asset_key,
                                   root_run_id=run_root(run))
        store = self.open(home)
        where = f"{asset_key} {partition}" if partition else asset_key
        published = store.publish(
            run_root(run), output, key, message=f"{where}: run {run.run_id}",
            metadata=metadata, data_keys=[f"{key}/{name}" for name in data_files] or None,
        )
        context.log.info(f"published {key} on {published.branch} ({store.backend}): commit "
                         f"{published.commit[:12]}, {published.changed} file(s) changed")
        return dg.DataVersion(published.data_version), {
            "versioning": store.backend,
            "versioned_key": key,
            "commit": published.commit,
            "branch": published.branch,
            "files_changed": published.changed,
        }


def run_root(run: dg.DagsterRun) -> str:
    """The run id whose branch a run writes on: its root run (re-executions share it)."""
    return run.root_run_id or run.run_id


def run_branch(run: dg.DagsterRun) -> str:
    """The store branch of a run."""
    return branch_name(run_root(run))


def data_store_for(lakefs: LakeFSSettings | None) -> DataStore:
    """The ``store`` resource: lakeFS when the settings configure it, else the local ledger.

    ``Settings.lakefs`` is set in production and wherever ``LAKEFS_HOST`` is set. The
    server, repository and keys are read at run time through ``dg.EnvVar`` (``LAKEFS_HOST``,
    ``CELLREP_LAKEFS_REPO``, ``LAKEFS_ACCESS_KEY_ID``, ``LAKEFS_SECRET_ACCESS_KEY``): no
    value, and no secret, is stored in the definitions. ``lakefs.branch``
    (``CELLREP_LAKEFS_BRANCH``, default ``main``) names the branch runs start from.
    """
    if lakefs is None:
        return DataStore()
    return DataStore(
        backend="lakefs",
        host=dg.EnvVar("LAKEFS_HOST"),
        repo=dg.EnvVar("CELLREP_LAKEFS_REPO"),
        access_key_id=dg.EnvVar(lakefs.access_key_id_env),
        secret_access_key=dg.EnvVar(lakefs.secret_access_key_env),
        main_branch=lakefs.branch,
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="versioned_store_merge",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Merge a successful run's data branch into main (failed runs keep theirs for inspection).",
)
def merge_successful_runs(context: dg.RunStatusSensorContext, store: DataStore, home: DataHome):
    """Merge the branch of a run that succeeded into main, then delete the branch."""
    run = context.dagster_run
    branch = run_branch(run)
    versioned = store.open(home.path)
    if not versioned.has_branch(branch):
        # Runs that publish nothing (training, features, ...) have no branch; a branch
        # already merged and deleted makes a second evaluation a no-op.
        context.log.info(f"run {run.run_id}: no branch {branch}, nothing to merge")
        return
    head = versioned.merge(branch, message=f"merge {branch}: run {run.run_id} succeeded",
                           metadata=commit_metadata(run_id=run.run_id, root_run_id=run_root(run),
                                                    job=run.job_name))
    versioned.discard(branch)
    context.log.info(f"run {run.run_id}: merged {branch} into {versioned.main} at {head[:12]}")


# A branch is caught up only this long after its run group's last run ended: the merge
# sensor handles fresh successes, and the two must not merge the same branch at once.
CATCH_UP_AFTER_S = 600.0


@dg.sensor(
    name="versioned_store_catch_up",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=300,
    description="Merge branches whose runs succeeded but whose merge failed (store unreachable, "
                "conflict since resolved); failed runs' branches stay.",
)
def catch_up_merges(context: dg.SensorEvaluationContext, store: DataStore, home: DataHome):
    """Retry the merges ``versioned_store_merge`` could not make.

    That sensor sees each successful run once: when its merge raises (lakeFS down, a
    conflict), Dagster reports the error and moves on. Here every ``run-<id>`` branch of
    the store is looked at again. It is merged when the latest run of its run group (the
    root run and its re-executions, which share the branch) succeeded, no run of the group
    is still going, and the last one ended at least ``CATCH_UP_AFTER_S`` ago. A branch
    whose latest run failed stays, as do branches of runs this instance does not know.
    """
    versioned = store.open(home.path)
    merged, failed = [], []
    for branch in versioned.branches():
        run_id = branch.removeprefix(RUN_BRANCH_PREFIX) if branch.startswith(RUN_BRANCH_PREFIX) else ""
        run = _latest_finished_run(context.instance, run_id) if run_id else None
        if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
            continue
        try:
            head = versioned.merge(branch, message=f"merge {branch}: run {run.run_id} succeeded (caught up)",
                                   metadata=commit_metadata(run_id=run.run_id, root_run_id=run_root(run),
                                                            job=run.job_name))
            versioned.discard(branch)
        except Exception as exc:  # one branch's failure must not stop the others
            failed.append(branch)
            context.log.warning(f"{branch}: merge failed again ({type(exc).__name__}: {exc})")
            continue
        merged.append(branch)
        context.log.info(f"{branch}: merged into {versioned.main} at {head[:12]}")
    if failed:
        raise dg.Failure(f"{len(failed)} branch(es) of successful runs could not be merged: "
                         f"{', '.join(failed)} (merged: {len(merged)})")
    return dg.SkipReason(f"caught up {len(merged)} branch(es): {', '.join(merged)}" if merged
                         else "no successful run's branch left unmerged")


def _latest_finished_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    """The latest run of ``run_id``'s run group if the whole group has finished, at least
    ``CATCH_UP_AFTER_S`` ago; ``None`` otherwise (or for a run this instance does not know)."""
    try:
        group = instance.get_run_group(run_id)
    except dg.DagsterRunNotFoundError:
        return None
    if group is None:
        return None
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[r.run_id for r in group[1]]))
    if not records or any(not r.dagster_run.is_finished for r in records):
        return None
    latest = max(records, key=lambda r: r.create_timestamp)
    ended = max(r.end_time if r.end_time is not None else _epoch(r.update_timestamp) for r in records)
    if time.time() - ended < CATCH_UP_AFTER_S:
        return None
    return latest.dagster_run


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch of a run storage timestamp (stored naive, in UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
