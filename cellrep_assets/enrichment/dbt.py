"""The dbt-duckdb project ``dbt_go`` as Dagster assets: GO closure → cluster × term counts → marts.

Sources map onto the Python assets that write them (``protein_clusters`` →
``protein_clusters``, every ``ref_*`` table → ``reference_tables``), so the lineage runs
features → clusters → enrichment in one graph; models are keyed by their dbt names in the
group ``enrichment``, and dbt's data tests become asset checks.

The manifest is built by ``dbt parse`` when definitions load and it is missing or older
than a project file: ``DbtProject.prepare_if_dev()`` only parses under ``dagster dev``,
and CI / ``make demo`` load the code on a clean checkout.
"""

# No `from __future__ import annotations`: Dagster reads resource annotations at definition time.

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from cellrep_assets.resources import DataHome
from cellrep_ml.config import warehouse_path
from cellrep_ml.warehouse import exclusive

DBT_DIR = Path(__file__).resolve().parents[2] / "dbt_go"
GROUP = "enrichment"
OWNERS = ["team:cellrep"]

#: Environment variable that profiles.yml reads for the DuckDB file.
WAREHOUSE_ENV = "CELLREP_WAREHOUSE"

# Files that change what `dbt parse` produces (target/ and logs/ are its outputs).
_PROJECT_SUFFIXES = {".sql", ".py", ".yml", ".yaml", ".md"}
_OUTPUT_DIRS = {"target", "logs", "dbt_packages"}


def dbt_executable() -> str:
    """The ``dbt`` of this interpreter's environment (its Python model imports cellrep_ml)."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.is_file() else "dbt"


@contextlib.contextmanager
def warehouse_env(path: Path) -> Iterator[None]:
    """Set ``CELLREP_WAREHOUSE`` for the dbt processes started inside, then restore it.

    ``DbtCliResource.cli`` hands dbt a copy of ``os.environ`` and takes no environment of
    its own, so the variable is set in this process for the duration of the call.
    """
    old = os.environ.get(WAREHOUSE_ENV)
    os.environ[WAREHOUSE_ENV] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(WAREHOUSE_ENV, None)
        else:
            os.environ[WAREHOUSE_ENV] = old


def _newest_source_mtime(project_dir: Path) -> float:
    newest = 0.0
    for path in project_dir.rglob("*"):
        rel = path.relative_to(project_dir).parts
        if rel[0] in _OUTPUT_DIRS or not path.is_file() or path.suffix not in _PROJECT_SUFFIXES:
            continue
        newest = max(newest, path.stat().st_mtime)
    return newest


def prepare_manifest(project: DbtProject) -> Path:
    """Run ``dbt parse`` into ``project.manifest_path`` when it is missing or stale.

    Parsing does not open the warehouse, but profiles.yml requires ``CELLREP_WAREHOUSE``:
    the environment's own value is kept, else the default data home's path is used.
    Concurrent loaders (several processes of ``dagster dev``, parallel tests) serialise on
    a lock file beside the manifest and the later ones find it fresh.
    """
    manifest = project.manifest_path
    manifest.parent.mkdir(parents=True, exist_ok=True)

    def fresh() -> bool:
        return manifest.is_file() and manifest.stat().st_mtime >= _newest_source_mtime(
            project.project_dir)

    if fresh():
        return manifest
    fd = os.open(manifest.parent / ".parse.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not fresh():
            path = Path(os.environ.get(WAREHOUSE_ENV) or warehouse_path())
            with warehouse_env(path):
                DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
                    ["parse", "--quiet"], target_path=manifest.parent).wait()
            if not manifest.is_file():
                raise FileNotFoundError(f"dbt parse of {project.project_dir} wrote no {manifest}")
    finally:
        os.close(fd)
    return manifest


#: Models rebuild when what they read was updated (or is requested in the same tick), as
#: everything downstream of the features (cellrep_assets.features.automation); unlike
#: ``eager``, never merely for being missing. Before any dataset is clustered the cluster
#: models build on the empty protein_clusters table the project's on-run-start hook creates.
AC = dg.AutomationCondition
ON_UPSTREAM_UPDATE = (AC.any_deps_updated().since_last_handled()
                      & ~AC.any_deps_in_progress() & ~AC.in_progress()
                      ).with_label("on_upstream_update")


class CellrepDbtTranslator(DagsterDbtTranslator):
    """Sources → the cellrep assets that write them; every model in the group ``enrichment``."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            name = dbt_resource_props["name"]
            if name == "protein_clusters":
                return dg.AssetKey(["protein_clusters"])
            if name.startswith("ref_"):
                return dg.AssetKey(["reference_tables"])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP

    def get_owners(self, dbt_resource_props: Mapping[str, Any]):
        return OWNERS

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]):
        return ON_UPSTREAM_UPDATE


dbt_project = DbtProject(project_dir=DBT_DIR, profiles_dir=DBT_DIR)
prepare_manifest(dbt_project)

translator = CellrepDbtTranslator(
    # the three ref_* sources share one asset key (reference_tables writes them together)
    settings=DagsterDbtTranslatorSettings(enable_duplicate_source_asset_keys=True)
)


def dbt_resource() -> DbtCliResource:
    """The ``dbt`` resource: the ``dbt_go`` project run by this environment's dbt."""
    return DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=translator,
    name="dbt_go",
    pool="warehouse",
)
def dbt_go_assets(context: dg.AssetExecutionContext, dbt: DbtCliResource, home: DataHome):
    """dbt build of dbt_go on the data home's warehouse: models, then their data tests."""
    path = warehouse_path(home.path)
    # Run artifacts (run_results.json, dbt.log) per run in the data home, not the checkout.
    target = home.path / "dbt" / "runs" / context.run.run_id
    # dbt opens the warehouse read-write itself: hold the writers' lock for the whole build.
    with exclusive(path), warehouse_env(path):
        yield from dbt.cli(["build"], context=context, target_path=target).stream()
