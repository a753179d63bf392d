"""Feature tables out to AnnData (.h5ad) and Parquet, via the library and `cellrep export`."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cellrep_ml import export as ex
from cellrep_ml import warehouse as wh
from cellrep_ml.cli import main
from cellrep_ml.embed import protein_profiles, vectors_of


def _cells(n=30) -> pl.DataFrame:
    return pl.DataFrame({
        "cell_id": [f"ds/L1/c{i:02d}" for i in range(n)],
        "dataset": "ds", "cell_line": "L1", "plate": "p1", "well": "A01",
        "field": [i % 3 for i in range(n)],
        "protein": [f"P{i % 5}" for i in range(n)],
        "split": ["test"] * n,
    })


def _materialise(version="1", seed=0, dim=12):
    cells = _cells()
    emb = np.random.default_rng(seed).standard_normal((cells.height, dim)).astype(np.float32)
    wh.write_cell_embeddings(wh.cell_embedding_frame(cells, emb, model_name="pci",
                                                     model_version=version, normalization="none"))
    prof = protein_profiles(cells, emb, normalization="none")
    wh.write_protein_features(wh.protein_feature_frame(prof, model_name="pci", model_version=version))
    return cells, emb, prof


def test_protein_features_to_h5ad_round_trip(tmp_path):
    _, _, prof = _materialise()
    out, n = ex.export_features("protein_features", model_name="pci",
                                out=tmp_path / "exports" / "p.h5ad")
    assert n == prof.height == 10
    adata = ad.read_h5ad(out)
    np.testing.assert_array_equal(adata.X, vectors_of(prof, "features"))
    assert adata.X.dtype == np.float32
    assert {"protein", "n_cells", "stat", "normalization", "model_name", "model_version",
            "dataset"} <= set(adata.obs.columns)
    assert adata.obs["protein"].tolist() == prof["protein"].to_list()
    assert adata.obs["n_cells"].tolist() == prof["n_cells"].to_list()
    # Two rows per protein (mean, median): names made unique with the statistic.
    assert list(adata.obs_names[:2]) == ["P0|mean", "P0|median"]
    assert adata.var_names[0] == "f0000" and adata.n_vars == 12
    meta = adata.uns["cellrep"]
    assert meta["model_name"] == "pci" and meta["model_version"] == "1"
    assert meta["normalization"] == "none" and meta["table"] == "protein_features"
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.h5ad"]  # no temporary left


def test_cell_embeddings_to_parquet_round_trip(tmp_path):
    cells, emb, _ = _materialise()
    out, n = ex.export_features("cell_embeddings", model_name="pci", out=tmp_path / "c.parquet")
    assert n == 30
    back = pl.read_parquet(out)
    assert back.schema["embedding"] == pl.List(pl.Float32)
    assert back["cell_id"].to_list() == sorted(cells["cell_id"].to_list())
    np.testing.assert_array_equal(np.stack(back["embedding"].to_list()), emb)
    meta = pq.read_schema(out).metadata
    assert json.loads(meta[b"cellrep.model_name"]) == "pci"
    assert json.loads(meta[b"cellrep.dim"]) == "12"
    pdf = pq.read_table(out).to_pandas()  # the pandas user's view
    assert len(pdf.loc[0, "embedding"]) == 12


def test_cell_embeddings_to_h5ad_obs_are_cells(tmp_path):
    cells, emb, _ = _materialise()
    out, _ = ex.export_features("cell_embeddings", model_name="pci", out=tmp_path / "c.h5ad")
    adata = ad.read_h5ad(out)
    assert list(adata.obs_names) == sorted(cells["cell_id"].to_list())
    assert {"plate", "well", "field", "split", "protein", "cell_line"} <= set(adata.obs.columns)
    np.testing.assert_array_equal(adata.X, emb)


def test_cli_export_picks_the_version(tmp_path):
    _materialise(version="1", seed=0)
    _, _, prof2 = _materialise(version="2", seed=1)
    runner = CliRunner()
    out = tmp_path / "latest.parquet"
    result = runner.invoke(main, ["export", "--table", "protein_features", "--model", "pci",
                                  "--format", "parquet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 10 rows" in result.output
    latest = pl.read_parquet(out)
    assert set(latest["model_version"]) == {"2"}
    np.testing.assert_array_equal(np.stack(latest["features"].to_list()), vectors_of(prof2, "features"))
    out1 = tmp_path / "v1.h5ad"
    result = runner.invoke(main, ["export", "--model", "pci", "--version", "1", "--dataset", "ds",
                                  "--out", str(out1)])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out1).uns["cellrep"]["model_version"] == "1"


def test_cli_export_errors(tmp_path):
    _materialise()
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--model", "nope", "--out", str(tmp_path / "x.h5ad")])
    assert result.exit_code == 1 and "no protein_features for model 'nope'" in result.output
    result = runner.invoke(main, ["export", "--model", "pci", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 1 and "unknown export format 'csv'" in result.output
    assert not (tmp_path / "x.h5ad").exists() and not (tmp_path / "x.csv").exists()


def test_a_failed_export_keeps_the_previous_file(tmp_path, monkeypatch):
    _materialise()
    out = tmp_path / "exports" / "p.h5ad"
    ex.export_features("protein_features", model_name="pci", out=out)
    before = out.read_bytes()

    def broken(self, path, **kwargs):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.export_features("protein_features", model_name="pci", out=out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.h5ad"]
