"""The DuckDB warehouse: fixed-size vectors, partitions replaced atomically, read-only readers."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from cellrep_ml import warehouse as wh
from cellrep_ml.cli import main
from cellrep_ml.cli.sql import connect as sql_connect
from cellrep_ml.config import data_home, warehouse_path
from cellrep_ml.embed import vector_series, vectors_of


def _cells(n: int, cell_line: str = "L1", dataset: str = "ds") -> pl.DataFrame:
    return pl.DataFrame({
        "cell_id": [f"{dataset}/{cell_line}/c{i}" for i in range(n)],
        "crop_index": list(range(n)),
        "dataset": dataset,
        "cell_line": cell_line,
        "plate": [f"p{i % 2}" for i in range(n)],
        "well": "A01",
        "field": [i % 3 for i in range(n)],
        "protein": [f"P{i % 4}" for i in range(n)],
        "split": ["test", "train", "val"] * (n // 3) + ["test"] * (n % 3),
    })


def _cell_frame(n=12, dim=8, cell_line="L1", version="1", seed=0, model="pci"):
    emb = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    frame = wh.cell_embedding_frame(_cells(n, cell_line), emb, model_name=model,
                                    model_version=version, normalization="plate")
    return frame, emb


def _protein_frame(vectors: dict[str, np.ndarray], *, model="pci", version="1", dataset="ds",
                   stat="mean") -> pl.DataFrame:
    names = list(vectors)
    return pl.DataFrame({
        "model_name": model, "model_version": version, "dataset": dataset, "protein": names,
        "n_cells": [10] * len(names), "stat": stat, "normalization": "none",
    }).with_columns(vector_series("features", np.stack([vectors[p] for p in names])))


def _rows(path, sql: str):
    con = wh.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# ----------------------------------------------------------------------------- round trip


def test_cell_embeddings_round_trip_with_fixed_size_arrays():
    path = warehouse_path()
    frame, emb = _cell_frame()
    assert wh.write_cell_embeddings(frame) == 12
    assert path.is_file() and path.parent == data_home()
    types = dict(_rows(path, "SELECT column_name, column_type FROM "
                             "(DESCRIBE cell_embeddings_d8)"))
    assert types["embedding"] == "FLOAT[8]"
    assert types["field"] == "BIGINT" and types["cell_id"] == "VARCHAR"
    assert _rows(path, "SELECT DISTINCT typeof(embedding) FROM cell_embeddings_d8") == [("FLOAT[8]",)]
    back = wh.read_features("cell_embeddings", model_name="pci")
    assert back.height == 12
    assert back.columns == [*wh.CELL_EMBEDDING_COLUMNS, "embedding"]
    back = back.sort("cell_id")
    order = np.argsort(frame["cell_id"].to_numpy())
    np.testing.assert_array_equal(vectors_of(back, "embedding"), emb[order])
    assert back["protein"].to_list() == frame.sort("cell_id")["protein"].to_list()
    assert set(back["normalization"]) == {"plate"}
    # The union view exposes the same rows with their length, as a list.
    assert _rows(path, "SELECT dim, len(embedding), count(*) FROM cell_embeddings GROUP BY ALL") == [(8, 8, 12)]


def test_protein_features_round_trip_and_partition_catalog():
    rng = np.random.default_rng(1)
    frame = _protein_frame({p: rng.standard_normal(16).astype(np.float32) for p in "ABC"})
    wh.write_protein_features(frame)
    assert _rows(warehouse_path(), "SELECT typeof(features) FROM protein_features_d16 LIMIT 1") == [("FLOAT[16]",)]
    back = wh.read_features("protein_features", model_name="pci", model_version="1")
    np.testing.assert_array_equal(vectors_of(back, "features"), vectors_of(frame, "features"))
    parts = _rows(warehouse_path(), "SELECT kind, model_name, model_version, dataset, cell_line, "
                                    "dim, table_name, n_rows, normalizations FROM feature_partitions")
    assert parts == [("protein_features", "pci", "1", "ds", None, 16, "protein_features_d16", 3, ["none"])]


def test_vectors_of_different_lengths_live_in_different_tables():
    frame8, _ = _cell_frame(dim=8, model="pci")
    frame5, _ = _cell_frame(dim=5, model="locclf")
    wh.write_cell_embeddings(frame8)
    wh.write_cell_embeddings(frame5)
    assert _rows(warehouse_path(), "SELECT dim, model_name, count(*) FROM cell_embeddings "
                                   "GROUP BY ALL ORDER BY dim") == [(5, "locclf", 12), (8, "pci", 12)]
    assert wh.read_features("cell_embeddings", model_name="locclf")["embedding"].dtype == pl.Array(pl.Float32, 5)


# ----------------------------------------------------------------------------- nearest proteins


def _planted(dim=256, n_other=40, seed=2) -> tuple[dict[str, np.ndarray], list[str]]:
    """SEC61B, five neighbours at increasing angles, and unrelated proteins."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim)
    vectors = {"SEC61B": base.astype(np.float32)}
    neighbours = [f"NB{k}" for k in range(5)]
    for k, name in enumerate(neighbours):
        # A unit direction orthogonal to base: cos = 1 / sqrt(1 + t^2), decreasing in k.
        u = rng.standard_normal(dim)
        u -= u @ base / (base @ base) * base
        u /= np.linalg.norm(u)
        vectors[name] = (base + 0.3 * (k + 1) * np.linalg.norm(base) * u).astype(np.float32)
    for j in range(n_other):
        vectors[f"X{j:02d}"] = rng.standard_normal(dim).astype(np.float32)
    return vectors, neighbours


def test_nearest_proteins_returns_the_planted_neighbours():
    vectors, neighbours = _planted(dim=32)
    wh.write_protein_features(_protein_frame(vectors))
    # Another model's features must not leak into the answer.
    rng = np.random.default_rng(0)
    wh.write_protein_features(_protein_frame(
        {p: rng.standard_normal(32).astype(np.float32) for p in vectors}, model="other"))
    top = wh.nearest_proteins("SEC61B", model_name="pci", k=5)
    assert top["protein"].to_list() == neighbours
    sims = top["similarity"].to_numpy()
    assert np.all(np.diff(sims) < 0)
    expected = [np.dot(vectors["SEC61B"], vectors[n]) / np.linalg.norm(vectors["SEC61B"])
                / np.linalg.norm(vectors[n]) for n in neighbours]
    np.testing.assert_allclose(sims, expected, rtol=1e-5)


def test_module_docstring_query_runs_through_cellrep_sql():
    vectors, neighbours = _planted(dim=384)
    wh.write_protein_features(_protein_frame(vectors))
    doc = wh.__doc__
    query = doc[doc.index("SELECT protein"):doc.index("LIMIT 20") + len("LIMIT 20")]
    con = sql_connect()
    rows = con.execute(query).fetchall()
    assert len(rows) == 20
    assert [r[0] for r in rows[:5]] == neighbours
    assert "SEC61B" not in [r[0] for r in rows]
    result = CliRunner().invoke(main, ["sql", query, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith("NB0,")


# ----------------------------------------------------------------------------- partitions


def test_rematerialising_a_partition_replaces_only_its_rows():
    old, _ = _cell_frame(n=12, cell_line="L1", seed=0)
    other, other_emb = _cell_frame(n=9, cell_line="L2", seed=1)
    wh.write_cell_embeddings(old)
    wh.write_cell_embeddings(other)
    new, new_emb = _cell_frame(n=6, cell_line="L1", seed=5)
    wh.write_cell_embeddings(new)
    rows = wh.read_features("cell_embeddings", model_name="pci")
    l1 = rows.filter(pl.col("cell_line") == "L1").sort("cell_id")
    l2 = rows.filter(pl.col("cell_line") == "L2").sort("cell_id")
    assert l1.height == 6 and l2.height == 9
    np.testing.assert_array_equal(vectors_of(l1, "embedding"),
                                  new_emb[np.argsort(new["cell_id"].to_numpy())])
    np.testing.assert_array_equal(vectors_of(l2, "embedding"),
                                  other_emb[np.argsort(other["cell_id"].to_numpy())])
    counts = _rows(warehouse_path(), "SELECT cell_line, n_rows FROM feature_partitions ORDER BY 1")
    assert counts == [("L1", 6), ("L2", 9)]


def test_rematerialising_with_another_length_removes_the_old_vectors():
    wh.write_cell_embeddings(_cell_frame(dim=8)[0])
    wh.write_cell_embeddings(_cell_frame(dim=4)[0])
    assert _rows(warehouse_path(), "SELECT count(*) FROM cell_embeddings_d8") == [(0,)]
    assert _rows(warehouse_path(), "SELECT count(*) FROM cell_embeddings_d4") == [(12,)]
    assert wh.read_features("cell_embeddings", model_name="pci")["embedding"].dtype.size == 4


def test_a_failing_write_leaves_the_old_rows(monkeypatch):
    old, old_emb = _cell_frame(seed=0)
    wh.write_cell_embeddings(old)
    real = wh._insert_rows

    def insert_then_fail(con, name):
        real(con, name)  # the DELETE and the INSERT have both run
        raise RuntimeError("disk full")

    monkeypatch.setattr(wh, "_insert_rows", insert_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        wh.write_cell_embeddings(_cell_frame(n=3, seed=9)[0])
    with pytest.raises(RuntimeError, match="disk full"):
        wh.write_cell_embeddings(_cell_frame(n=3, dim=6, seed=9)[0])  # would create a table
    back = wh.read_features("cell_embeddings", model_name="pci").sort("cell_id")
    np.testing.assert_array_equal(vectors_of(back, "embedding"),
                                  old_emb[np.argsort(old["cell_id"].to_numpy())])
    tables = _rows(warehouse_path(), "SELECT table_name FROM information_schema.tables "
                                     "WHERE table_name LIKE 'cell_embeddings_d%'")
    assert tables == [("cell_embeddings_d8",)]


def test_bad_frames_are_rejected_before_writing():
    frame, _ = _cell_frame()
    with pytest.raises(ValueError, match="missing columns"):
        wh.write_cell_embeddings(frame.drop("cell_line"))
    with pytest.raises(ValueError, match="unknown normalization"):
        wh.write_cell_embeddings(frame.with_columns(normalization=pl.lit("zscore")))
    with pytest.raises(ValueError, match="missing values"):
        wh.write_cell_embeddings(frame.with_columns(protein=pl.lit(None, pl.Utf8)))
    with pytest.raises(ValueError, match="fixed-length"):
        wh.write_cell_embeddings(frame.with_columns(embedding=pl.lit(1.0)))
    assert not warehouse_path().exists()


# ----------------------------------------------------------------------------- readers and writers


def test_read_only_readers_cannot_write():
    wh.write_cell_embeddings(_cell_frame()[0])
    con = wh.connect()
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM cell_embeddings_d8")
    con.close()
    con = sql_connect()
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM warehouse.cell_embeddings_d8")
    con.close()
    result = CliRunner().invoke(main, ["sql", "DROP TABLE warehouse.cell_embeddings_d8"])
    assert result.exit_code != 0
    assert _rows(warehouse_path(), "SELECT count(*) FROM cell_embeddings_d8") == [(12,)]


def test_one_writer_at_a_time():
    with wh.writer(), pytest.raises(TimeoutError, match="another process is writing"):
        with wh.writer(timeout=0.2):
            pass
    with wh.writer() as con:  # the lock is released on exit
        assert con.execute("SELECT count(*) FROM feature_partitions").fetchone() == (0,)


def test_missing_warehouse_and_unknown_model():
    with pytest.raises(FileNotFoundError, match="no warehouse"):
        wh.connect()
    wh.write_cell_embeddings(_cell_frame()[0])
    with pytest.raises(LookupError, match="no protein_features for model 'pci'"):
        wh.read_features("protein_features", model_name="pci")
    with pytest.raises(LookupError, match="version '7'"):
        wh.read_features("cell_embeddings", model_name="pci", model_version="7")


def test_cellrep_sql_exposes_warehouse_tables_by_plain_name():
    wh.write_cell_embeddings(_cell_frame()[0])
    wh.write_protein_features(_protein_frame({"A": np.ones(8, np.float32)}))
    for query, expected in [
        ("SELECT count(*) AS n FROM cell_embeddings", "12"),
        ("SELECT count(*) AS n FROM protein_features_d8", "1"),
        ("SELECT count(*) AS n FROM feature_partitions", "2"),
    ]:
        result = CliRunner().invoke(main, ["sql", query, "--format", "csv"])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == ["n", expected]


def test_nearest_proteins_refuses_an_ambiguous_profile():
    vectors, neighbours = _planted(dim=16)
    plate = _protein_frame(vectors).with_columns(normalization=pl.lit("plate"))
    wh.write_protein_features(pl.concat([_protein_frame(vectors), plate]))
    with pytest.raises(ValueError, match="several mean profiles"):
        wh.nearest_proteins("SEC61B", model_name="pci")
    top = wh.nearest_proteins("SEC61B", model_name="pci", normalization="plate", k=3)
    assert top["protein"].to_list() == neighbours[:3]
    with pytest.raises(LookupError, match="protein 'NOPE' has no mean profile"):
        wh.nearest_proteins("NOPE", model_name="pci", normalization="plate")


def _results(dataset: str, method: str, values: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"dataset": dataset, "method": method,
                         "metric": [f"m{i}" for i in range(len(values))], "value": values})


def test_replace_partition_swaps_only_that_partition():
    wh.replace_partition("evaluation_results", _results("a", "pci", [0.1, 0.2]),
                         {"dataset": "a", "method": "pci"})
    wh.replace_partition("evaluation_results", _results("b", "pci", [0.3]),
                         {"dataset": "b", "method": "pci"})
    wh.replace_partition("evaluation_results", _results("a", "pci", [0.9]),
                         {"dataset": "a", "method": "pci"})
    rows = wh.read_table("SELECT dataset, value FROM evaluation_results ORDER BY dataset")
    assert rows.rows() == [("a", pytest.approx(0.9)), ("b", pytest.approx(0.3))]
    # An empty frame clears the partition (a re-run that found nothing to score).
    wh.replace_partition("evaluation_results", _results("a", "pci", [])
                         .cast({"value": pl.Float64}), {"dataset": "a", "method": "pci"})
    assert wh.read_table("evaluation_results")["dataset"].to_list() == ["b"]


def test_replace_partition_rejects_rows_of_another_partition_and_keeps_the_old():
    wh.replace_partition("evaluation_results", _results("a", "pci", [0.5]),
                         {"dataset": "a", "method": "pci"})
    with pytest.raises(ValueError, match="rows have dataset other than 'a'"):
        wh.replace_partition("evaluation_results", _results("b", "pci", [0.1]),
                             {"dataset": "a", "method": "pci"})
    with pytest.raises(ValueError, match="identifier"):
        wh.replace_partition("results; drop table x", _results("a", "pci", [0.1]),
                             {"dataset": "a"})
    # A frame lacking a column of the table fails inside the transaction: old rows stay.
    with pytest.raises(duckdb.Error):
        wh.replace_partition("evaluation_results", _results("a", "pci", [0.7]).drop("metric")
                             .with_columns(extra=pl.lit(1)), {"dataset": "a", "method": "pci"})
    assert wh.read_table("evaluation_results")["value"].to_list() == [0.5]
