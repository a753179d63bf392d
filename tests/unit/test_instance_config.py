"""The embedded Dagster instance limits every pool (warehouse writer, training) to one step."""

from __future__ import annotations

import dagster as dg

from cellrep_assets.instance import ensure_instance_config


def test_instance_config_limits_pools_and_keeps_an_operators_file(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    path = ensure_instance_config()
    with dg.DagsterInstance.get() as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    path.write_text("telemetry:\n  enabled: false\n")
    ensure_instance_config(home)
    assert "concurrency" not in path.read_text()
