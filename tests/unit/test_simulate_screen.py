"""simulate_screen on disk: formats, schema, determinism, ground truth, controls, nuisance."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest
import tifffile
from click.testing import CliRunner

from cellrep_ml.io.schema import MANIFEST_SCHEMA
from cellrep_ml.io.screen_config import ScreenConfig
from cellrep_ml.simulate import (
    CONTROL_KINDS,
    PATTERNS,
    ProteinSpec,
    read_manifest,
    render_field,
    simulate_screen,
)


def _digest(root):
    h = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


@pytest.fixture(scope="module")
def opencell(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "oc"
    res = simulate_screen("opencell", out, n_proteins=4, n_cell_lines=3, fields_per_protein=2,
                          seed=11, field_size=128, workers=1)
    return res


def test_manifest_follows_the_schema(opencell):
    df = pl.read_csv(opencell.manifest)
    assert df.columns == list(MANIFEST_SCHEMA)
    typed = read_manifest(opencell.root)
    assert typed.height == 4 * 3 * 2 == opencell.n_fields
    assert set(typed["channels"]) == {"GFP|Hoechst"}
    assert set(typed["cell_line"]) == {"HEK293T", "U2OS", "HeLa"}
    # One protein per well, every protein in every cell line, >1 plate.
    wells = typed.group_by("cell_line", "plate", "well").agg(pl.col("protein").n_unique())
    assert wells["protein"].max() == 1
    assert typed.group_by("protein").agg(pl.col("cell_line").n_unique())["cell_line"].min() == 3
    assert typed["plate"].n_unique() >= 2
    for row in typed.iter_rows(named=True):
        assert row["path"] == (f"images/{row['cell_line']}/{row['plate']}/"
                               f"{row['well']}_f{row['field']}.ome.tif")
        assert (opencell.root / row["path"]).is_file()


def test_ome_tiff_round_trip(opencell):
    path = opencell.root / read_manifest(opencell.root)["path"][0]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX"
        assert series.dtype == np.uint16
        assert series.shape == (2, 128, 128)
        assert "<Channel " in tif.ome_metadata and 'Name="GFP"' in tif.ome_metadata
        assert 'Name="Hoechst"' in tif.ome_metadata
        assert tif.ome_metadata.index('Name="GFP"') < tif.ome_metadata.index('Name="Hoechst"')


def test_screen_yaml_roles(opencell):
    cfg = ScreenConfig.read(opencell.root)
    assert cfg.dataset == opencell.dataset
    assert (cfg.channels.protein, cfg.channels.nucleus) == ("GFP", "Hoechst")
    assert cfg.crop_size == 100 and cfg.dims == 2


def test_ground_truth_tables(opencell):
    gt = opencell.ground_truth
    proteins = pl.read_parquet(gt / "proteins.parquet")
    cells = pl.read_parquet(gt / "cells.parquet")
    assert proteins.height == 4
    assert set(cells["protein"]) == set(proteins["protein"])
    assert cells.height == opencell.n_cells > 0
    for p in proteins.iter_rows(named=True):
        assert set(p["compartments"]) <= set(PATTERNS)
    # Fractions line up with compartments and sum to one.
    assert (cells["compartments"].list.len() == cells["fractions"].list.len()).all()
    assert np.allclose(cells["fractions"].list.sum().to_numpy(), 1.0)
    # Label masks agree with the per-cell table.
    row = read_manifest(opencell.root).row(0, named=True)
    masks = tifffile.imread(gt / "masks" / row["cell_line"] / row["plate"] /
                            f"{row['well']}_f{row['field']}.tif")
    assert masks.shape == (2, 128, 128)
    mine = cells.filter((pl.col("cell_line") == row["cell_line"]) & (pl.col("plate") == row["plate"])
                        & (pl.col("well") == row["well"]) & (pl.col("field") == row["field"]))
    labels = sorted(set(np.unique(masks[1])) - {0})
    assert mine["label"].sort().to_list() == labels
    areas = np.bincount(masks[1].ravel())
    assert mine.sort("label")["area"].to_list() == [int(areas[i]) for i in labels]


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path):
    kw = dict(n_proteins=2, n_cell_lines=1, fields_per_protein=2, seed=3, field_size=96)
    a = simulate_screen("opencell", tmp_path / "a", workers=1, **kw)
    b = simulate_screen("opencell", tmp_path / "b", workers=2, **kw)
    c = simulate_screen("opencell", tmp_path / "c", workers=1, **{**kw, "seed": 4})
    da, db, dc = _digest(a.root), _digest(b.root), _digest(c.root)
    assert da == db
    images = [k for k in da if k.startswith("images/")]
    assert images and all(da[k] != dc[k] for k in images)


def test_nuisance_varies_across_plates(opencell):
    man = read_manifest(opencell.root).filter(pl.col("cell_line") == "HEK293T")
    stats = {}
    for row in man.iter_rows(named=True):
        img = tifffile.imread(opencell.root / row["path"]).astype(float)
        masks = tifffile.imread(opencell.ground_truth / "masks" / row["cell_line"] / row["plate"]
                                / f"{row['well']}_f{row['field']}.tif")
        # Nuclear stain: background far from cells (plate offset) and nuclear signal above it
        # (plate intensity factor x illumination); the stain itself is the same everywhere.
        bg = np.median(img[1][masks[1] == 0])
        sig = np.median(img[1][masks[0] > 0]) - bg
        stats.setdefault(row["plate"], []).append((bg, sig))
    per_plate = np.array([np.mean(v, axis=0) for v in stats.values()])
    assert len(per_plate) >= 2
    spread = per_plate.max(0) / per_plate.min(0)
    assert spread.max() > 1.15, per_plate


def test_allen3d_writes_czyx_with_the_five_controls(tmp_path):
    res = simulate_screen("allen3d", tmp_path / "a3", n_proteins=2, n_cell_lines=1,
                          fields_per_protein=1, seed=0, field_size=64, workers=1)
    man = read_manifest(res.root)
    assert set(CONTROL_KINDS) <= set(man["protein"])
    assert set(man["channels"]) == {"membrane|DNA|structure"}
    cfg = ScreenConfig.read(res.root)
    assert cfg.dims == 3 and cfg.channels.protein == "structure"

    def load(protein):
        row = man.filter(pl.col("protein") == protein).row(0, named=True)
        with tifffile.TiffFile(res.root / row["path"]) as tif:
            assert tif.series[0].axes == "CZYX"
            img = tif.series[0].asarray()
        masks = tifffile.imread(res.ground_truth / "masks" / row["cell_line"] / row["plate"] /
                                f"{row['well']}_f{row['field']}.tif")
        return img, masks

    img, masks = load("ctrl-dna")
    assert img.ndim == 4 and img.shape[0] == 3 and masks.shape[1:] == img.shape[1:]
    cell = masks[1] > 0
    assert cell.any()
    assert np.array_equal(img[2][cell], img[1][cell])
    img, masks = load("ctrl-membrane")
    assert np.array_equal(img[2][masks[1] > 0], img[0][masks[1] > 0])
    img, masks = load("ctrl-blank")
    cell = masks[1] > 0
    # Blank: the structure inside the cell is no brighter than outside it.
    assert abs(np.median(img[2][cell]) - np.median(img[2][~cell])) < 30
    cells = pl.read_parquet(res.ground_truth / "cells.parquet")
    borrowed = cells.filter(pl.col("protein") == "ctrl-random")["rendered_as"]
    assert borrowed.len() > 0 and not borrowed.is_in(list(CONTROL_KINDS)).any()


def test_render_field_in_memory_is_deterministic():
    p = ProteinSpec(name="X", compartments=("mitochondria", "cytosol"), weights=(0.7, 0.3))
    a = render_field("opencell", "U2OS", p, seed=[1, 2], field_size=96)
    b = render_field("opencell", "U2OS", p, seed=[1, 2], field_size=96)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.cells, b.cells)
    assert a.image.dtype == np.uint16 and a.image.shape == (2, 96, 96)


@pytest.mark.parametrize(("preset", "channels", "nucleus"), [
    ("hpa", ("protein", "nucleus", "microtubules", "er"), "nucleus"),
    ("yeast", ("GFP", "RFP"), None),
])
def test_other_2d_presets(tmp_path, preset, channels, nucleus):
    res = simulate_screen(preset, tmp_path / preset, n_proteins=2, n_cell_lines=2,
                          fields_per_protein=1, seed=0, field_size=128, workers=1)
    cfg = ScreenConfig.read(res.root)
    assert cfg.channels.nucleus == nucleus
    assert cfg.channels.all[0] == channels[0]
    img = tifffile.imread(res.root / read_manifest(res.root)["path"][0])
    assert img.shape == (len(channels), 128, 128)
    if preset == "yeast":
        assert cfg.channels.segmentation == "RFP" and cfg.channels.markers == ("RFP",)
    else:
        assert cfg.crop_size == 256 and cfg.output_size == 64


def test_cli_prints_a_summary(tmp_path):
    from cellrep_ml.cli import main

    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["simulate", "--preset", "opencell", "--proteins", "2",
                                       "--cell-lines", "1", "--fields-per-protein", "1",
                                       "--seed", "0", "--out", str(out), "--field-size", "64",
                                       "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "fields/s" in result.output and "2 fields" in result.output
    assert (out / "manifest.csv").is_file()
    bad = CliRunner().invoke(main, ["simulate", "--preset", "opencell", "--cell-lines", "9",
                                    "--out", str(tmp_path / "x"), "--no-progress"])
    assert bad.exit_code != 0 and "cell lines" in bad.output


def test_localization_labels_come_from_go_cc():
    from cellrep_ml.annotations import load_reference
    from cellrep_ml.simulate import localization_labels

    labels = localization_labels(load_reference(), ["SEC61B", "TOMM20", "FBL", "NOT_A_GENE"])
    got = dict(zip(labels["protein"], labels["label"], strict=True))
    assert set(got) == {"SEC61B", "TOMM20", "FBL"}
    assert got["SEC61B"] == "er" and got["TOMM20"] == "mitochondria" and got["FBL"] == "nucleolus"
