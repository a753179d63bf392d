"""raw_screen → cell_crops materialized on a tiny simulated screen with an ephemeral instance."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from cellrep_assets.partitions import cell_line_partitions, dataset_partitions, screen_key
from cellrep_assets.resources import DataHome
from cellrep_assets.screens import cell_crops, raw_screen
from cellrep_ml.config import crops_dir, partition_key, raw_dir
from cellrep_ml.io.registry import register_screen


def _setup(screen, home):
    record = register_screen(screen / "manifest.csv", home=home)
    instance = dg.DagsterInstance.ephemeral()
    lines = {partition_key(c): c for c in record.cell_lines}
    instance.add_dynamic_partitions(dataset_partitions.name, [partition_key(record.dataset)])
    instance.add_dynamic_partitions(cell_line_partitions.name, sorted(lines) + ["no_such_line"])
    return record, instance, lines


def _materialize(instance, home, dataset_key, line_key):
    return dg.materialize(
        [raw_screen, cell_crops],
        partition_key=screen_key(dataset_key, line_key),
        instance=instance,
        resources={"home": DataHome(root=str(home))},
        raise_on_error=False,
    )


def _check_results(result):
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_materialize_every_cell_line(tiny_screen, tmp_path):
    home = tmp_path / "home"
    record, instance, lines = _setup(tiny_screen, home)
    dataset_key = partition_key(record.dataset)
    for key, cell_line in lines.items():
        result = _materialize(instance, home, dataset_key, key)
        assert result.success
        checks = _check_results(result)
        assert checks == {"fields_ingested": True, "quarantine_rate": True,
                          "crops_non_empty": True, "crops_finite": True, "qc_rate": True}
        cells = pl.read_parquet(crops_dir(record.dataset, cell_line, home) / "cells.parquet")
        assert cells.height > 0
        assert set(cells["cell_line"]) == {cell_line}
        # No field of view feeds two splits.
        assert cells.group_by("plate", "well", "field").agg(pl.col("split").n_unique())[
            "split"].max() == 1
        mats = result.asset_materializations_for_node("cell_crops")
        meta = mats[0].metadata
        assert meta["cells"].value == cells.height
        assert "data:image/png;base64," in meta["gallery"].value
        assert "data:image/png;base64," in meta["qc"].value
        raw_meta = result.asset_materializations_for_node("raw_screen")[0].metadata
        assert raw_meta["fields"].value == 12  # 4 proteins x 3 fields


def test_combination_not_in_screen_materializes_nothing(tiny_screen, tmp_path):
    home = tmp_path / "home"
    record, instance, _ = _setup(tiny_screen, home)
    result = _materialize(instance, home, partition_key(record.dataset), "no_such_line")
    assert result.success
    assert result.asset_materializations_for_node("raw_screen") == []
    assert not (home / "raw" / partition_key(record.dataset) / "no_such_line").exists()


def test_bad_field_is_quarantined_rest_ingests(tiny_screen, tmp_path):
    home = tmp_path / "home"
    record, instance, lines = _setup(tiny_screen, home)
    key, cell_line = sorted(lines.items())[0]
    manifest = pl.read_csv(tiny_screen / "manifest.csv")
    victim = manifest.filter(pl.col("cell_line") == cell_line)["path"][0]
    path = tiny_screen / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated TIFF

    result = _materialize(instance, home, partition_key(record.dataset), key)
    assert result.success
    quarantine = pl.read_parquet(raw_dir(record.dataset, cell_line, home) / "quarantine.parquet")
    assert quarantine.height == 1
    assert victim.split("/")[-1] in quarantine["reason"][0]
    fields = pl.read_parquet(raw_dir(record.dataset, cell_line, home) / "fields.parquet")
    assert fields.height == 11


def test_all_bad_partition_fails_alone(tiny_screen, tmp_path):
    home = tmp_path / "home"
    record, instance, lines = _setup(tiny_screen, home)
    (bad_key, bad_line), (good_key, _) = sorted(lines.items())
    manifest = pl.read_csv(tiny_screen / "manifest.csv")
    for rel in manifest.filter(pl.col("cell_line") == bad_line)["path"]:
        (tiny_screen / rel).unlink()

    dataset_key = partition_key(record.dataset)
    bad = _materialize(instance, home, dataset_key, bad_key)
    assert not bad.success
    assert not (crops_dir(record.dataset, bad_line, home) / "cells.parquet").exists()
    good = _materialize(instance, home, dataset_key, good_key)
    assert good.success


@pytest.mark.parametrize("asset", [raw_screen, cell_crops])
def test_asset_definitions_are_documented(asset):
    spec = next(iter(asset.specs))
    assert spec.description
    assert spec.owners == ["team:cellrep"]
    assert spec.code_version
    assert spec.kinds
