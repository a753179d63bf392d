import polars as pl
import pytest

from cellrep_ml.errors import InputError
from cellrep_ml.io.atomic import atomic_path, write_parquet_atomic


def test_file_replaced_only_on_success(tmp_path):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]  # no temporary left behind
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_directory_swap(tmp_path):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "a").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


def test_parquet(tmp_path):
    df = pl.DataFrame({"a": [1, 2]})
    path = write_parquet_atomic(df, tmp_path / "sub" / "x.parquet")
    assert pl.read_parquet(path).equals(df)


def test_input_error_message_names_everything():
    err = InputError("missing channel 'GFP'", path="/s/a.tif", row=7,
                     expected="channels ['GFP', 'DAPI']", received="['DAPI']")
    msg = str(err)
    assert "manifest row 7" in msg and "/s/a.tif" in msg
    assert "expected channels ['GFP', 'DAPI']" in msg and "got ['DAPI']" in msg
    assert isinstance(err, ValueError)
