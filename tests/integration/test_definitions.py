"""The code location loads, validates with the dagster CLI, and the demo runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
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


@pytest.mark.slow
def test_demo_materializes_into_persistent_instance(tmp_path, monkeypatch):
    import dagster as dg

    from cellrep_assets.demo import run_demo

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    summary = run_demo(home, screens={"demo-tiny": ("opencell", 3, 2, 2)}, field_size=256,
                       train=False)  # training through Dagster: test_training_assets.py
    assert len(summary) == 2 and all(row["success"] and row["cells"] > 0 for row in summary)
    # The runs were recorded in the persistent instance the UI reads.
    instance = dg.DagsterInstance.get()
    assert len(instance.get_runs()) == 2
    # The SQL entry point sees the cells.
    from cellrep_ml.cli.sql import connect

    n = connect(home).execute("SELECT count(*) FROM cells").fetchone()[0]
    assert n == sum(row["cells"] for row in summary)
    assert pl.read_parquet(next(home.glob("crops/*/*/cells.parquet"))).height > 0
