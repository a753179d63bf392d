"""Manifest reading and the checks that need only the table."""

from pathlib import Path

import polars as pl
import pytest

from cellrep_ml.errors import DuplicateFieldError, ManifestError, PathEscapeError
from cellrep_ml.io.manifest import field_id, read_manifest, resolve_paths, row_problems
from cellrep_ml.io.schema import MANIFEST_SCHEMA

HEADER = "dataset,cell_line,plate,well,field,protein,path,channels\n"


def _csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(header + body)
    return path


def test_csv_is_typed_and_numbered(tmp_path):
    path = _csv(tmp_path, "ds,HEK,001,A01,1,ACTB,a.tif,GFP|DNA\n"
                          "ds,HEK,001, A02 ,2,TUBB,b.tif,GFP|DNA\n")
    df = read_manifest(path)
    assert df.columns[: 1 + len(MANIFEST_SCHEMA)] == ["row", *MANIFEST_SCHEMA]
    assert df["row"].to_list() == [1, 2]
    assert df["field"].dtype == pl.Int64 and df["field"].to_list() == [1, 2]
    # Text stays text: leading zeros survive, whitespace is stripped.
    assert df["plate"].to_list() == ["001", "001"]
    assert df["well"].to_list() == ["A01", "A02"]
    assert field_id(df.row(0, named=True)) == "ds/HEK/001/A01/1"


def test_parquet_with_float_fields_and_extra_columns(tmp_path):
    path = tmp_path / "m.parquet"
    pl.DataFrame({
        "dataset": ["ds"], "cell_line": ["U2OS"], "plate": [3], "well": ["B02"],
        "field": [4.0], "protein": ["LMNB1"], "path": ["x.ome.tif"], "channels": [None],
        "note": ["kept"],
    }).write_parquet(path)
    df = read_manifest(path)
    assert df["plate"].to_list() == ["3"]
    assert df["field"].to_list() == [4]
    assert df["channels"].to_list() == [None]  # OME files may name their own channels
    assert df["note"].to_list() == ["kept"]


def test_missing_column_names_header_row_and_columns(tmp_path):
    path = _csv(tmp_path, "ds,HEK,1,A01,1,ACTB,a.tif\n",
                header="dataset,cell_line,plate,well,field,protein,path\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert "manifest row 0" in msg and "channels" in msg and str(path) in msg
    assert err.value.row == 0


def test_type_error_names_row_and_column(tmp_path):
    path = _csv(tmp_path, "ds,HEK,1,A01,1,ACTB,a.tif,GFP\n"
                          "ds,HEK,1,A02,two,ACTB,b.tif,GFP\n"
                          "ds,HEK,1,A03,1.5,ACTB,c.tif,GFP\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert "'field'" in msg and "row 2: 'two'" in msg and "row 3: '1.5'" in msg
    assert err.value.row == 2 and str(path) in msg and "whole numbers" in msg


def test_parquet_non_integral_float_is_a_type_error(tmp_path):
    path = tmp_path / "m.parquet"
    pl.DataFrame({k: ["v"] for k in MANIFEST_SCHEMA if k != "field"} | {"field": [1.5]}
                 ).write_parquet(path)
    with pytest.raises(ManifestError, match="row 1: 1.5"):
        read_manifest(path)


def test_empty_required_cell_is_reported(tmp_path):
    path = _csv(tmp_path, "ds,HEK,1,A01,1,ACTB,a.tif,GFP\nds,HEK,1,A02,2,ACTB,,GFP\n")
    with pytest.raises(ManifestError, match=r"'path' is empty in row\(s\) 2") as err:
        read_manifest(path)
    assert err.value.row == 2


@pytest.mark.parametrize("body, match", [
    ("", "no data rows"),
    ('ds,HEK,1,A01,1,ACTB,"a.tif,GFP\n', "cannot read"),
])
def test_unreadable_tables(tmp_path, body, match):
    with pytest.raises(ManifestError, match=match):
        read_manifest(_csv(tmp_path, body))


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    other = tmp_path / "m.xlsx"
    other.write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(other)


def test_duplicates_name_both_rows(tmp_path):
    path = _csv(tmp_path, "ds,HEK,1,A01,1,ACTB,a.tif,GFP\n"
                          "ds,HEK,1,A01,2,ACTB,b.tif,GFP\n"
                          "ds,HEK,1,A01,1,TUBB,c.tif,GFP\n")
    problems = row_problems(read_manifest(path), path=path)
    assert sorted(problems) == [1, 3]
    for r in (1, 3):
        assert isinstance(problems[r], DuplicateFieldError)
        msg = str(problems[r])
        assert f"manifest row {r}" in msg and "rows 1 and 3" in msg and str(path) in msg
        assert "one row per field of view" in msg


def test_file_and_channel_counts_must_agree(tmp_path):
    path = _csv(tmp_path, "ds,HEK,1,A01,1,ACTB,a.png|b.png|c.png,GFP|DNA\n"
                          "ds,HEK,1,A01,2,ACTB,a.png|b.png,GFP|GFP\n"
                          "ds,HEK,1,A01,3,ACTB,a.png|b.png,GFP|DNA\n")
    problems = row_problems(read_manifest(path), path=path)
    assert sorted(problems) == [1, 2]
    assert "3 names in 'channels' for 3 files" in str(problems[1])
    assert "distinct channel names" in str(problems[2])


def test_resolve_paths_inside_root(tmp_path):
    root = tmp_path / "screen"
    root.mkdir()
    got = resolve_paths("img/a.png | img/../img/b.png", root, row=4)
    assert got == [root / "img" / "a.png", root / "img" / "b.png"]
    assert resolve_paths(str(root / "x.tif"), root) == [root / "x.tif"]


@pytest.mark.parametrize("cell", ["../outside.tif", "img/../../outside.tif", "/etc/passwd"])
def test_resolve_paths_refuses_escapes(tmp_path, cell):
    root = tmp_path / "screen"
    root.mkdir()
    with pytest.raises(PathEscapeError) as err:
        resolve_paths(cell, root, row=7)
    msg = str(err.value)
    assert "manifest row 7" in msg and cell in msg and f"inside {root}" in msg
