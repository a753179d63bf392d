import pytest

from cellrep_ml.config import crops_dir, data_home, partition_key, raw_dir


@pytest.mark.parametrize(
    ("name", "key"),
    [("HEK 293T", "hek_293t"), ("U2OS", "u2os"), ("demo-opencell", "demo-opencell"),
     ("  A549 (lung) ", "a549_lung"), ("yeast/GFP", "yeast_gfp")],
)
def test_partition_key_sanitises(name, key):
    assert partition_key(name) == key


@pytest.mark.parametrize("name", ["", "   ", "///"])
def test_partition_key_rejects_empty(name):
    with pytest.raises(ValueError, match="partition key"):
        partition_key(name)


def test_data_home_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLREP_HOME", str(tmp_path / "home"))
    assert data_home() == (tmp_path / "home").resolve()
    assert raw_dir("Demo", "HEK 293T") == data_home() / "raw" / "demo" / "hek_293t"
    assert crops_dir("Demo", "U2OS", tmp_path) == tmp_path / "crops" / "demo" / "u2os"
