"""The code location loads, validates with the dagster CLI, and the demo runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cellrep_assets.definitions import defs


def test_definitions_load():
    names = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_screen", "cell_crops"} <= names
    assert defs.resolve_job_def("screen_job")
    assert defs.resolve_sensor_def("inbox_sensor")


def test_dagster_definitions_validate():
    exe = Path(sys.executable).parent / "dagster"
    out = subprocess.run([str(exe), "definitions", "validate", "-m", "cellrep_assets.definitions"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def readme_queries() -> list[str]:
    """The SQL blocks of the README's "SQL for users" section."""
    import re

    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("## SQL for users"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_demo_runs_from_screen_to_leaderboard_and_enrichment(tmp_path, monkeypatch):
    """The whole demo on a tiny screen: crops, training, champion, embeddings, evaluations,
    leaderboard, clusters and the dbt enrichment mart, then the README's queries."""
    import dagster as dg

    from cellrep_assets.demo import run_demo
    from cellrep_assets.features import FEATURE_METHODS
    from cellrep_ml.cli.sql import connect

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("CELLREP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    summary = run_demo(home, screens={"demo-tiny": ("opencell", 8, 2, 2)}, field_size=256)
    failed = [row for row in summary if not row["success"]]
    assert not failed, failed
    crops = [row for row in summary if "cells" in row]
    assert len(crops) == 2 and all(row["cells"] > 0 for row in crops)
    # The runs were recorded in the persistent instance the UI reads.
    assert len(dg.DagsterInstance.get().get_runs()) >= 2 + 5 + 1 + 2 + 2

    con = connect(home)
    try:
        n = con.execute("SELECT count(*) FROM cells").fetchone()[0]
        assert n == sum(row["cells"] for row in crops)
        methods = {r[0] for r in con.execute("SELECT DISTINCT method FROM leaderboard").fetchall()}
        assert methods == set(FEATURE_METHODS)
        assert con.execute("SELECT count(*) FROM cluster_enrichment").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM cbvae_results").fetchone()[0] > 0
        protein = con.execute("SELECT min(protein) FROM protein_features").fetchone()[0]
    finally:
        con.close()
    # Every worked query of the README runs on the demo's warehouse.
    for query in readme_queries():
        con = connect(home)
        try:
            con.execute(query.replace("SEC61B", protein)).fetchall()
        finally:
            con.close()
