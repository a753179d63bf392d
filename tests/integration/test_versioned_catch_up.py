"""versioned_store_catch_up: merges the branches of successful runs whose merge failed."""

from __future__ import annotations

import dagster as dg
import pytest

import cellrep_assets.versioning as versioning
from cellrep_assets.resources import DataHome
from cellrep_assets.versioning import DataStore, catch_up_merges
from cellrep_ml.versioning import LocalStore, branch_name


@dg.asset
def fine() -> int:
    return 1


@dg.asset
def broken() -> int:
    raise RuntimeError("boom")


def _run(instance, asset, tags=None) -> str:
    result = dg.materialize([asset], instance=instance, raise_on_error=False, tags=tags)
    return result.run_id


def _branch_with_data(store: LocalStore, home, run_id: str, name: str) -> str:
    branch = store.begin(run_id)
    (home / name).write_text(name)
    store.put(home / name, name, branch)
    store.commit(branch, f"data of {name}")
    return branch


def _evaluate(instance, home):
    ctx = dg.build_sensor_context(instance=instance,
                                  resources={"store": DataStore(), "home": DataHome(root=str(home))})
    return catch_up_merges(ctx)


@pytest.fixture()
def setup(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test() as instance:
        yield instance, home, LocalStore(home)


def test_catch_up_merges_only_successful_finished_groups(setup, monkeypatch):
    instance, home, store = setup
    ok = _branch_with_data(store, home, _run(instance, fine), "ok")
    failed = _branch_with_data(store, home, _run(instance, broken), "failed")
    # A success whose re-execution (same run group, same branch) then failed: its branch
    # holds the failed attempt's data, so it must stay.
    root = _run(instance, fine)
    _run(instance, broken, tags={"dagster/root_run_id": root, "dagster/parent_run_id": root})
    retried = _branch_with_data(store, home, root, "retried")
    unknown = _branch_with_data(store, home, "0f0f0f0f-not-a-run-here", "unknown")
    main_before, ok_head = store.head(), store.head(ok)

    # Runs that just ended are the merge sensor's: nothing happens yet.
    assert "no successful run's branch" in _evaluate(instance, home).skip_message
    assert store.head() == main_before

    monkeypatch.setattr(versioning, "CATCH_UP_AFTER_S", 0.0)
    result = _evaluate(instance, home)
    assert result.skip_message == f"caught up 1 branch(es): {ok}"
    assert "ok" in store.manifest() and "failed" not in store.manifest()
    assert set(store.branches()) >= {failed, retried, unknown} and ok not in store.branches()
    assert store.head() == ok_head  # fast-forwarded to what the run committed
    # Nothing left to do: a second evaluation merges nothing.
    assert _evaluate(instance, home).skip_message == "no successful run's branch left unmerged"


def test_catch_up_keeps_going_past_a_failing_merge_and_reports_it(setup, monkeypatch):
    instance, home, store = setup
    first = _branch_with_data(store, home, _run(instance, fine), "first")
    second = _branch_with_data(store, home, _run(instance, fine), "second")
    monkeypatch.setattr(versioning, "CATCH_UP_AFTER_S", 0.0)
    real_merge = LocalStore.merge

    def merge(self, branch, *args, **kwargs):
        if branch == first:
            raise ConnectionError("store unreachable")
        return real_merge(self, branch, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "merge", merge)
    with pytest.raises(dg.Failure, match=f"1 branch\\(es\\).*{first}.*merged: 1"):
        _evaluate(instance, home)
    assert "second" in store.manifest() and second not in store.branches()
    assert first in store.branches()  # kept, and tried again next time
    monkeypatch.setattr(LocalStore, "merge", real_merge)
    assert _evaluate(instance, home).skip_message == f"caught up 1 branch(es): {first}"


def test_catch_up_sensor_definition():
    assert catch_up_merges.name == "versioned_store_catch_up"
    assert catch_up_merges.default_status == dg.DefaultSensorStatus.RUNNING
    assert branch_name("abc") == versioning.RUN_BRANCH_PREFIX + "abc"


def test_run_storage_timestamps_are_read_as_utc():
    from datetime import UTC, datetime, timedelta, timezone

    from cellrep_assets.versioning import _epoch

    assert _epoch(datetime(1970, 1, 1, 0, 0, 10)) == 10.0  # naive: UTC, whatever the local zone
    assert _epoch(datetime(1970, 1, 1, 1, 0, 10, tzinfo=timezone(timedelta(hours=1)))) == 10.0
    assert _epoch(datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC)) == 10.0
