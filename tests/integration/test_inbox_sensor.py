"""The inbox sensor adds partitions and requests runs exactly once per new screen."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl

from cellrep_assets.resources import DataHome
from cellrep_assets.screens import inbox_sensor
from cellrep_ml.config import inbox_dir, partition_key


def _evaluate(instance, home, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"home": DataHome(root=str(home))})
    return inbox_sensor(ctx)


def _drop(screen, home, name="screen-a"):
    dst = inbox_dir(home) / name
    shutil.copytree(screen, dst)
    return dst


def test_new_screen_requests_each_partition_once(tiny_screen, tmp_path):
    home = tmp_path / "home"
    instance = dg.DagsterInstance.ephemeral()
    empty = _evaluate(instance, home)
    assert not empty.run_requests
    assert "no new screens" in empty.skip_reason.skip_message

    dropped = _drop(tiny_screen, home)
    first = _evaluate(instance, home, empty.cursor)
    lines = sorted({partition_key(c) for c in pl.read_csv(dropped / "manifest.csv")["cell_line"]})
    assert len(first.run_requests) == len(lines) == 2
    assert sorted(r.partition_key.keys_by_dimension["cell_line"] for r in first.run_requests) == lines
    assert len({r.run_key for r in first.run_requests}) == 2
    added = {req.partitions_def_name: sorted(req.partition_keys)
             for req in first.dynamic_partitions_requests}
    assert added["cellrep_cell_line"] == lines
    assert len(added["cellrep_dataset"]) == 1

    again = _evaluate(instance, home, first.cursor)
    assert not again.run_requests  # same screen, same cursor: nothing new


def test_changed_screen_requests_new_runs(tiny_screen, tmp_path):
    home = tmp_path / "home"
    instance = dg.DagsterInstance.ephemeral()
    dropped = _drop(tiny_screen, home)
    first = _evaluate(instance, home)
    manifest = pl.read_csv(dropped / "manifest.csv")
    manifest.head(manifest.height - 1).write_csv(dropped / "manifest.csv")
    second = _evaluate(instance, home, first.cursor)
    assert len(second.run_requests) == 2
    assert {r.run_key for r in second.run_requests}.isdisjoint({r.run_key for r in first.run_requests})


def test_invalid_screen_is_reported_not_retried(tiny_screen, tmp_path):
    home = tmp_path / "home"
    instance = dg.DagsterInstance.ephemeral()
    dropped = _drop(tiny_screen, home, "broken")
    (dropped / "screen.yaml").unlink()
    result = _evaluate(instance, home)
    assert not result.run_requests
    assert "screen.yaml" in result.skip_reason.skip_message
    assert not _evaluate(instance, home, result.cursor).run_requests
