"""Ingestion of a screen: quarantine of every kind of bad field, no-op re-ingest, the
registry and the ``cellrep ingest`` command."""

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from cellrep_ml.cli import main
from cellrep_ml.config import raw_dir, screens_dir
from cellrep_ml.errors import ManifestError, ScreenConfigError, UnknownScreenError
from cellrep_ml.io.ingest import ingest_partition, ingest_screen
from cellrep_ml.io.readers import read_field
from cellrep_ml.io.registry import get_screen, list_screens, register_screen
from cellrep_ml.io.schema import FIELD_INDEX_SCHEMA, QUARANTINE_SCHEMA
from cellrep_ml.io.screen_config import ChannelRoles, ScreenConfig

RNG = np.random.default_rng(1)
HEADER = "dataset,cell_line,plate,well,field,protein,path,channels"
CONFIG = ScreenConfig(dataset="demo", channels=ChannelRoles(protein="GFP", nucleus="DNA"))


def _img(*shape, dtype=np.uint16):
    return RNG.integers(1, 200, size=shape).astype(dtype)


def _ome(path: Path, data: np.ndarray, names: list[str]) -> None:
    axes = "CYX" if data.ndim == 3 else "CZYX"
    tifffile.imwrite(path, data, metadata={"axes": axes, "Channel": {"Name": names}})


def _screen(root: Path, rows: list[str], config: ScreenConfig = CONFIG) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config.write(root)
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join([HEADER, *rows]) + "\n")
    return manifest


@pytest.fixture
def screen(tmp_path) -> Path:
    """A screen with three good fields and one field for every kind of bad input."""
    root = tmp_path / "screen"
    img = root / "img"
    img.mkdir(parents=True)
    _ome(img / "good.ome.tif", _img(2, 16, 16), ["GFP", "DNA"])
    tifffile.imwrite(img / "plain.tif", _img(2, 16, 16), photometric="minisblack")
    Image.fromarray(_img(16, 16, dtype=np.uint8)).save(img / "g.png")
    Image.fromarray(_img(16, 16, dtype=np.uint8)).save(img / "d.png")
    # Bad ones.
    _ome(img / "cut.ome.tif", _img(2, 32, 32), ["GFP", "DNA"])
    raw = (img / "cut.ome.tif").read_bytes()
    (img / "cut.ome.tif").write_bytes(raw[: len(raw) // 2])
    _ome(img / "stack.ome.tif", _img(2, 3, 16, 16), ["GFP", "DNA"])
    _ome(img / "noDNA.ome.tif", _img(2, 16, 16), ["GFP", "ER"])
    Image.fromarray(_img(16, 20, dtype=np.uint8)).save(img / "wide.png")
    tifffile.imwrite(img / "int64.tif", _img(2, 16, 16, dtype=np.int64), photometric="minisblack")
    _ome(img / "blank.ome.tif", np.full((2, 16, 16), 3, np.uint16), ["GFP", "DNA"])
    (tmp_path / "outside.ome.tif").write_bytes(img.joinpath("good.ome.tif").read_bytes())
    rows = [
        "demo,HEK,P1,A01,1,ACTB,img/good.ome.tif,",                    # 1 good (OME names)
        "demo,HEK,P1,A01,2,ACTB,img/plain.tif,GFP|DNA",                # 2 good (plain)
        "demo,HEK,P1,A02,1,TUBB,img/g.png|img/d.png,GFP|DNA",          # 3 good (per channel)
        "demo,HEK,P1,A03,1,LMNB1,img/missing.tif,GFP|DNA",             # 4 missing file
        "demo,HEK,P1,A03,2,LMNB1,img/cut.ome.tif,",                    # 5 truncated
        "demo,HEK,P1,A03,3,LMNB1,img/stack.ome.tif,",                  # 6 3-D in a 2-D screen
        "demo,HEK,P1,A03,4,LMNB1,img/noDNA.ome.tif,",                  # 7 missing channel
        "demo,HEK,P1,A03,5,LMNB1,img/g.png|img/wide.png,GFP|DNA",      # 8 inconsistent sizes
        "demo,HEK,P1,A04,1,SEC61B,img/good.ome.tif,",                  # 9 duplicate of 10
        "demo,HEK,P1,A04,1,SEC61B,img/plain.tif,GFP|DNA",              # 10 duplicate of 9
        "demo,HEK,P1,A04,2,SEC61B,img/int64.tif,GFP|DNA",              # 11 unsupported dtype
        "demo,HEK,P1,A04,3,SEC61B,img/blank.ome.tif,",                 # 12 blank
        "demo,HEK,P1,A04,4,SEC61B,../outside.ome.tif,",                # 13 escapes the root
        "demo,U2OS,P1,B01,1,ACTB,img/good.ome.tif,",                   # 14 other cell line
    ]
    return _screen(root, rows)


# The full bad-input matrix: manifest row -> (error type, words the reason must contain).
BAD = {
    4: ("ImageReadError", "img/missing.tif", ["not found", "expected an existing file"]),
    5: ("ImageReadError", "img/cut.ome.tif", ["truncated", "expected"]),
    6: ("ImageShapeError", "img/stack.ome.tif", ["wrong dimensionality", "expected 2-D fields",
                                                 "got 3-D"]),
    7: ("ChannelError", "img/noDNA.ome.tif", ["['DNA'] not in the field",
                                              "expected channels among ['GFP', 'ER']"]),
    8: ("ImageShapeError", "img/wide.png", ["differ in size", "expected (Z, Y, X) = (1, 16, 16)",
                                            "got (Z, Y, X) = (1, 16, 20)"]),
    9: ("DuplicateFieldError", "manifest.csv", ["rows 9 and 10", "expected one row per field"]),
    10: ("DuplicateFieldError", "manifest.csv", ["rows 9 and 10", "expected one row per field"]),
    11: ("UnsupportedDtypeError", "img/int64.tif", ["int64", "expected uint8 / uint16 / float32"]),
    12: ("BlankImageError", "img/blank.ome.tif", ["blank", "expected signal"]),
    13: ("PathEscapeError", "../outside.ome.tif", ["escapes the screen root",
                                                   "expected a file inside"]),
}


def test_bad_fields_are_quarantined_and_good_ones_ingest(screen, tmp_path):
    out = tmp_path / "out"
    result = ingest_partition(screen, CONFIG, "HEK", out, workers=3)
    assert (result.dataset, result.cell_line, result.skipped) == ("demo", "HEK", False)
    assert (result.n_fields, result.n_quarantined) == (3, len(BAD))
    assert not result.all_quarantined

    fields = pl.read_parquet(result.field_index_path)
    assert fields.schema == pl.Schema(FIELD_INDEX_SCHEMA)
    assert fields["row"].to_list() == [1, 2, 3]
    assert fields["field_id"].to_list() == ["demo/HEK/P1/A01/1", "demo/HEK/P1/A01/2",
                                            "demo/HEK/P1/A02/1"]
    assert fields["format"].to_list() == ["ome-tiff", "tiff", "png"]
    assert fields["channels"].to_list() == ["GFP|DNA"] * 3  # OME names filled in
    assert fields["size_y"].to_list() == [16] * 3 and fields["size_z"].to_list() == [1] * 3
    assert fields["dtype"].to_list() == ["uint16", "uint16", "uint8"]
    root = screen.parent
    assert fields["abs_paths"][2].to_list() == [str(root / "img/g.png"), str(root / "img/d.png")]
    assert all(len(s) == 16 for s in fields["signature"])

    quarantine = pl.read_parquet(result.quarantine_path)
    assert quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert quarantine["row"].to_list() == sorted(BAD)
    assert result.reasons == quarantine["reason"].to_list()
    for rec in quarantine.iter_rows(named=True):
        error, file, words = BAD[rec["row"]]
        assert rec["error"] == error, rec
        reason = rec["reason"]
        assert f"manifest row {rec['row']}" in reason, reason
        assert file.lstrip("./") in reason, reason
        for w in words:
            assert w in reason, reason

    meta = json.loads(result.meta_path.read_text())
    assert meta["n_fields"] == 3 and meta["n_quarantined"] == len(BAD)
    assert meta["manifest_path"] == str(screen.resolve())
    assert len(meta["manifest_fingerprint"]) == 16 and meta["ingested_at"]


def test_field_index_rows_feed_read_field(screen, tmp_path):
    result = ingest_partition(screen, CONFIG, "HEK", tmp_path / "out")
    for row in pl.read_parquet(result.field_index_path).iter_rows(named=True):
        image = read_field(row, ["DNA", "GFP"])
        assert image.shape == (2, row["size_y"], row["size_x"])
        assert image.dtype == np.dtype(row["dtype"])


def test_reingest_is_a_no_op_until_a_file_or_row_changes(screen, tmp_path):
    out = tmp_path / "out"
    first = ingest_partition(screen, CONFIG, "HEK", out)
    outputs = [first.field_index_path, first.quarantine_path, first.meta_path]
    stamps = [p.stat().st_mtime_ns for p in outputs]

    again = ingest_partition(screen, CONFIG, "HEK", out)
    assert again.skipped
    assert (again.n_fields, again.n_quarantined, again.reasons) == \
        (first.n_fields, first.n_quarantined, first.reasons)
    assert [p.stat().st_mtime_ns for p in outputs] == stamps

    # A changed file (new bytes, new mtime) re-ingests: the blank field now has signal.
    blank = screen.parent / "img/blank.ome.tif"
    _ome(blank, _img(2, 16, 16), ["GFP", "DNA"])
    st = blank.stat()
    os.utime(blank, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = ingest_partition(screen, CONFIG, "HEK", out)
    assert not changed.skipped
    assert (changed.n_fields, changed.n_quarantined) == (4, len(BAD) - 1)

    # A file appearing where one was missing re-ingests too.
    tifffile.imwrite(screen.parent / "img/missing.tif", _img(2, 16, 16), photometric="minisblack")
    appeared = ingest_partition(screen, CONFIG, "HEK", out)
    assert not appeared.skipped and appeared.n_fields == 5

    # A changed row re-ingests: drop the duplicate.
    lines = screen.read_text().splitlines()
    screen.write_text("\n".join(line for line in lines if "A04,1,SEC61B,img/plain" not in line) + "\n")
    edited = ingest_partition(screen, CONFIG, "HEK", out)
    assert not edited.skipped and edited.n_fields == 6
    assert ingest_partition(screen, CONFIG, "HEK", out).skipped
    # Another role channel changes what is validated: not a no-op either.
    other = ScreenConfig(dataset="demo", channels=ChannelRoles(protein="GFP", nucleus=None,
                                                               markers=("DNA",)))
    assert not ingest_partition(screen, other, "HEK", out).skipped


def test_all_bad_partition_still_writes_its_files(tmp_path):
    manifest = _screen(tmp_path / "s", ["demo,HEK,P1,A01,1,ACTB,nope.tif,GFP|DNA",
                                        "demo,HEK,P1,A01,2,ACTB,nope2.tif,GFP|DNA"])
    result = ingest_partition(manifest, CONFIG, "HEK", tmp_path / "out")
    assert result.all_quarantined and result.n_fields == 0 and result.n_quarantined == 2
    assert pl.read_parquet(result.field_index_path).schema == pl.Schema(FIELD_INDEX_SCHEMA)
    assert pl.read_parquet(result.quarantine_path).height == 2


def test_3d_screen_accepts_stacks_and_refuses_planes(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    _ome(root / "z.ome.tif", _img(2, 4, 16, 16), ["GFP", "DNA"])
    _ome(root / "flat.ome.tif", _img(2, 16, 16), ["GFP", "DNA"])
    config = ScreenConfig(dataset="demo", dims=3,
                          channels=ChannelRoles(protein="GFP", nucleus="DNA"))
    manifest = _screen(root, ["demo,HEK,P1,A01,1,ACTB,z.ome.tif,",
                              "demo,HEK,P1,A01,2,ACTB,flat.ome.tif,"], config)
    result = ingest_partition(manifest, config, "HEK", tmp_path / "out")
    assert (result.n_fields, result.n_quarantined) == (1, 1)
    assert pl.read_parquet(result.field_index_path)["size_z"].to_list() == [4]
    assert "expected 3-D fields" in result.reasons[0] and "got 2-D" in result.reasons[0]


def test_manifest_level_errors_raise(screen, tmp_path):
    with pytest.raises(ManifestError, match=r"no row for cell line 'HeLa'.*\['HEK', 'U2OS'\]"):
        ingest_partition(screen, CONFIG, "HeLa", tmp_path / "out")
    other = ScreenConfig(dataset="other", channels=CONFIG.channels)
    with pytest.raises(ManifestError, match="dataset does not match"):
        ingest_partition(screen, other, "HEK", tmp_path / "out")


# --------------------------------------------------------------------------- registry


def test_register_get_list(screen, tmp_path):
    home = tmp_path / "home"
    record = register_screen(screen, home=home)
    assert record.dataset == "demo" and record.cell_lines == ("HEK", "U2OS")
    assert record.manifest_path == screen.resolve() and record.manifest_path.is_absolute()
    assert record.config_path == screen.parent.resolve() / "screen.yaml"
    stored = screens_dir(home) / "demo.json"
    stamp = stored.stat().st_mtime_ns
    assert register_screen(screen, home=home) == record  # idempotent
    assert stored.stat().st_mtime_ns == stamp
    assert get_screen("demo", home=home) == record
    assert list_screens(home=home) == [record]


def test_a_new_manifest_replaces_the_record(screen, tmp_path):
    home = tmp_path / "home"
    register_screen(screen, home=home)
    moved = _screen(tmp_path / "v2", ["demo,HeLa S3,P1,A01,1,ACTB,a.tif,GFP|DNA"])
    record = register_screen(moved, home=home)
    assert get_screen("demo", home=home).manifest_path == moved.resolve()
    assert get_screen("demo", home=home).cell_lines == ("HeLa S3",)
    assert list_screens(home=home) == [record]


def test_get_screen_by_partition_key_and_unknown(tmp_path):
    home = tmp_path / "home"
    config = ScreenConfig(dataset="My Screen", channels=CONFIG.channels)
    register_screen(_screen(tmp_path / "a", ["My Screen,HEK,P1,A01,1,ACTB,a.tif,GFP|DNA"], config),
                    home=home)
    assert get_screen("my_screen", home=home).dataset == "My Screen"
    with pytest.raises(UnknownScreenError) as err:
        get_screen("nope", home=home)
    assert "'nope'" in str(err.value) and "['My Screen']" in str(err.value)


def test_register_refuses_inconsistent_screens(tmp_path):
    home = tmp_path / "home"
    with pytest.raises(ManifestError, match="does not match screen.yaml"):
        register_screen(_screen(tmp_path / "a", ["other,HEK,P1,A01,1,ACTB,a.tif,GFP"]), home=home)
    with pytest.raises(ManifestError, match="share a partition key"):
        register_screen(_screen(tmp_path / "b", ["demo,HEK 293,P1,A01,1,ACTB,a.tif,GFP",
                                                 "demo,hek_293,P1,A01,1,ACTB,a.tif,GFP"]),
                        home=home)
    bare = tmp_path / "c"
    bare.mkdir()
    (bare / "manifest.csv").write_text(HEADER + "\n")
    with pytest.raises(ScreenConfigError, match="not found"):
        register_screen(bare / "manifest.csv", home=home)
    assert list_screens(home=home) == []


def test_ingest_screen_into_the_data_home(screen, tmp_path):
    home = tmp_path / "home"
    results = ingest_screen(screen, home=home)
    assert [(r.cell_line, r.n_fields, r.n_quarantined) for r in results] == \
        [("HEK", 3, len(BAD)), ("U2OS", 1, 0)]
    assert results[1].out_dir == raw_dir("demo", "U2OS", home)
    assert (raw_dir("demo", "U2OS", home) / "fields.parquet").is_file()
    only = ingest_screen(screen, home=home, cell_lines=["U2OS"])
    assert [r.cell_line for r in only] == ["U2OS"] and only[0].skipped
    with pytest.raises(ManifestError, match="not in the manifest"):
        ingest_screen(screen, home=home, cell_lines=["HeLa"])


# --------------------------------------------------------------------------- CLI


def test_cli_reports_quarantine_and_succeeds(screen, tmp_path):
    out = CliRunner().invoke(main, ["ingest", str(screen), "--home", str(tmp_path / "h")])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.split()[:3] == ["HEK", "3", str(len(BAD))] for line in lines), out.output
    assert any(line.split()[:3] == ["U2OS", "1", "0"] for line in lines), out.output
    assert "manifest row 13" in out.output and "escapes the screen root" in out.output


def test_cli_fails_when_a_partition_is_all_bad(tmp_path):
    manifest = _screen(tmp_path / "s", ["demo,HEK,P1,A01,1,ACTB,nope.tif,GFP|DNA"])
    out = CliRunner().invoke(main, ["ingest", str(manifest), "--home", str(tmp_path / "h")])
    assert out.exit_code == 1
    assert "every field of cell line(s) ['HEK'] was quarantined" in out.output


def test_cli_fails_on_an_invalid_manifest(tmp_path):
    manifest = _screen(tmp_path / "s", ["demo,HEK,P1,A01,x,ACTB,a.tif,GFP|DNA"])
    out = CliRunner().invoke(main, ["ingest", str(manifest), "--home", str(tmp_path / "h"),
                                    "--cell-line", "HEK"])
    assert out.exit_code == 2
    assert "invalid screen" in out.output and "manifest row 1" in out.output
    assert "'field'" in out.output
