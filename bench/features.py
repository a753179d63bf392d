"""Benchmark: feature queries, per-protein aggregation and embedding throughput.

    .venv/bin/python bench/features.py
    .venv/bin/python bench/features.py --skip-throughput           # (a) and (b) only
    .venv/bin/python bench/features.py --methods pci cytoself --configs paper

(a) "the 20 proteins most similar to one protein" over P proteins × D dims, the SQL of
    ``cellrep_ml.warehouse`` run through the connection ``cellrep sql`` opens (in-memory
    DuckDB, warehouse attached read-only, plain-name views), median of repeated runs in
    one process; beside it a brute-force numpy scan and a plain DuckDB
    ``array_cosine_similarity`` scan of one in-memory table, as references.
(b) ``protein_profiles`` mean over N cells × d dims (20,000 proteins, all in the test
    split), median of a few runs; the median statistic and plate normalisation beside it.
(c) ``embed_cells`` throughput, cells/s, per method, configuration and precision
    (float32, bfloat16 autocast) on this machine's CPU (torch threads = cores), crops
    already at the model's input size; store reads and float16→float32 included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cellrep_ml import warehouse as wh  # noqa: E402
from cellrep_ml.embed import normalize, protein_profiles, vector_series  # noqa: E402

QUERY = """
SELECT protein, array_cosine_similarity(features, (
         SELECT features FROM protein_features_d{dim}
         WHERE protein = '{protein}' AND model_name = 'bench' AND model_version = '1'
           AND stat = 'mean')) AS similarity
FROM protein_features_d{dim}
WHERE model_name = 'bench' AND model_version = '1' AND stat = 'mean'
  AND protein <> '{protein}'
ORDER BY similarity DESC
LIMIT 20"""


CORES = os.cpu_count() or 1


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds, and process CPU seconds (every thread) divided by the cores.

    On a machine shared with other work, wall time counts the waits for a core; CPU time
    over cores is what the same run would take with the cores to itself (a lower bound
    when the work does not use every core).
    """
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, (time.process_time() - c) / CORES


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median wall and CPU/cores milliseconds over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    runs = [_timed(fn) for _ in range(repeats)]
    return (1000 * statistics.median(r[0] for r in runs),
            1000 * statistics.median(r[1] for r in runs))


def _ms(t: tuple[float, float]) -> tuple[str, str]:
    return f"{t[0]:.1f} ms", f"{t[1]:.1f} ms"


def _s(t: tuple[float, float]) -> tuple[str, str]:
    return f"{t[0] / 1000:.2f} s", f"{t[1] / 1000:.2f} s"


Row = tuple[str, str, str, str]  # name, wall, CPU / cores, target


def bench_query(n_proteins: int, dim: int, repeats: int) -> list[Row]:
    """(a) nearest proteins: cellrep sql engine vs numpy vs a plain DuckDB scan."""
    import duckdb

    from cellrep_ml.cli.sql import connect

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_proteins, dim)).astype(np.float32)
    names = [f"P{i:05d}" for i in range(n_proteins)]
    frame = pl.DataFrame({
        "model_name": "bench", "model_version": "1", "dataset": "ds", "protein": names,
        "n_cells": 50, "stat": "mean", "normalization": "none",
    }).with_columns(vector_series("features", vectors))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t = time.perf_counter()
        wh.write_protein_features(frame, path=home / "warehouse.duckdb")
        write_s = time.perf_counter() - t
        con = connect(home)
        sql = QUERY.format(dim=dim, protein=names[123])
        top = con.execute(sql).fetchall()
        assert len(top) == 20
        t = _median_ms(lambda: con.execute(sql).fetchall(), repeats)
        rows.append(("(a) nearest 20, `cellrep sql` engine (view → attached warehouse)",
                     *_ms(t), "< 30 ms"))
        # The same through the library call (opens its own read-only connection per call).
        t = _median_ms(lambda: wh.nearest_proteins(names[123], model_name="bench",
                                                   path=home / "warehouse.duckdb"), repeats)
        rows.append(("(a) nearest 20, wh.nearest_proteins (connect + query)", *_ms(t), ""))
        con.close()
        rows.append((f"(a) write {n_proteins:,} protein profiles (one transaction)",
                     f"{1000 * write_s:.0f} ms", "", ""))

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def numpy_scan():
        sims = unit @ unit[123]
        sims[123] = -np.inf
        return np.argpartition(-sims, 20)[:20]

    rows.append(("(a) reference: brute-force numpy (normalised rows)",
                 *_ms(_median_ms(numpy_scan, repeats)), ""))
    mem = duckdb.connect()
    mem.register("f", frame.to_arrow())
    mem.execute("CREATE TABLE t AS SELECT protein, features FROM f")
    q = vectors[123].tolist()
    scan = (f"SELECT protein, array_cosine_similarity(features, {q}::FLOAT[{dim}]) AS s "
            "FROM t ORDER BY s DESC LIMIT 21")
    rows.append(("(a) reference: plain DuckDB array_cosine_similarity scan",
                 *_ms(_median_ms(lambda: mem.execute(scan).fetchall(), repeats)), ""))
    return rows


def bench_aggregate(n_cells: int, dim: int, n_proteins: int, repeats: int) -> list[Row]:
    """(b) per-protein mean (and median, normalisation) over many cells."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n_cells, dim), dtype=np.float32)
    cells = pl.DataFrame({
        "dataset": "ds",
        "protein": pl.Series(rng.integers(0, n_proteins, n_cells)).cast(pl.Utf8),
        "plate": pl.Series(rng.integers(0, 8, n_cells)).cast(pl.Utf8),
        "split": "test",
    })
    label = f"{n_cells:,} cells × {dim}-d, {n_proteins:,} proteins"
    t = _median_ms(lambda: protein_profiles(cells, x, stats=("mean",)), repeats, warmup=1)
    rows = [(f"(b) protein_profiles mean, {label}", *_s(t), "< 3 s")]
    t = _median_ms(lambda: protein_profiles(cells, x, stats=("median",)), 1, warmup=0)
    rows.append((f"(b) protein_profiles median, {label}", *_s(t), ""))
    t = _median_ms(lambda: normalize(x, cells, "plate"), 1, warmup=0)
    rows.append((f"(b) normalize 'plate' (8 plates), {n_cells:,} × {dim}-d", *_s(t), ""))
    return rows


TARGETS = {("pci", "paper"): "≥ 100 cells/s", ("cytoself", "paper"): "≥ 60 crops/s"}


def plain_pci_source_encoder(channels: int = 2):
    """The reference of issue 4: a plain ``nn.Sequential`` PCI source encoder up to the
    yeast feature layer (conv4: 3×3 conv, ReLU, BN; 96 | pool | 256 | pool | 384, 384),
    its last ReLU output max-pooled over space by the caller."""
    import torch.nn as nn

    def block(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
                nn.BatchNorm2d(c_out, momentum=0.01, eps=1e-3)]

    return nn.Sequential(*block(channels, 96), nn.MaxPool2d(2), *block(96, 256), nn.MaxPool2d(2),
                         *block(256, 384), nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True))


def bench_plain_pci(n: int, batch_size: int) -> Row:
    """(c) reference: the plain encoder on crops already float32 in memory, PyTorch defaults."""
    import torch

    torch.manual_seed(0)
    model = plain_pci_source_encoder().eval()
    crops = torch.rand(n, 2, 64, 64)

    def run() -> None:
        with torch.inference_mode():
            for a in range(0, n, batch_size):
                model(crops[a:a + batch_size]).amax(dim=(-2, -1))

    with torch.inference_mode():
        model(crops[:8])  # warm-up
    wall, cpu = _timed(run)
    return (f"(c) reference: plain PyTorch PCI source encoder to conv4, float32, in memory "
            f"({n} cells)", f"{n / wall:,.0f} cells/s", f"{n / cpu:,.0f} cells/s", "")


def bench_throughput(methods: list[str], configs: list[str], n_cells: dict[str, int],
                     batch_size: int, precisions: list[str]) -> list[Row]:
    """(c) embed_cells cells/s per method and configuration on the CPU."""
    import torch

    from cellrep_ml.embed import embed_cells, input_shape
    from cellrep_ml.io.crop_store import CropStoreWriter
    from cellrep_ml.models import build, list_models

    torch.set_num_threads(CORES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            if method not in list_models():
                continue
            for config in configs:
                torch.manual_seed(0)
                model = build(method, config, protein_channels=1, marker_channels=1)
                shape = input_shape(model)
                n = n_cells[config] if len(shape) == 2 else max(4, n_cells[config] // 32)
                path = Path(tmp) / f"{method}-{config}.zarr"
                rng = np.random.default_rng(2)
                with CropStoreWriter(path, channel_names=["GFP", "DNA"], crop_shape=shape,
                                     with_masks=False) as w:
                    for a in range(0, n, 64):
                        w.append(rng.random((min(64, n - a), 2, *shape)).astype(np.float16))
                for precision in precisions:
                    embed_cells(model, path, batch_size=min(batch_size, 8), device="cpu",
                                indices=np.arange(8) % n, precision=precision)  # warm-up
                    w, c = time.perf_counter(), time.process_time()
                    emb = embed_cells(model, path, batch_size=batch_size, device="cpu",
                                      precision=precision)
                    wall, cpu = time.perf_counter() - w, (time.process_time() - c) / CORES
                    rows.append((f"(c) embed {method} {config} {precision} "
                                 f"({'×'.join(map(str, shape))}, D={emb.shape[1]:,}, {n} cells)",
                                 f"{n / wall:,.0f} cells/s", f"{n / cpu:,.0f} cells/s",
                                 TARGETS.get((method, config), "")))
                if (method, config) == ("pci", "paper"):
                    rows.append(bench_plain_pci(n, batch_size))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proteins", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--cell-dim", type=int, default=256)
    parser.add_argument("--methods", nargs="+",
                        default=["pci", "cytoself", "locclf", "cbvae", "autoencoder", "pci_random"])
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--throughput-cells", type=int, default=256,
                        help="crops per paper-size run (tiny runs use 8×)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--skip-query", action="store_true")
    parser.add_argument("--skip-aggregate", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    rows: list[Row] = []
    if not args.skip_query:
        rows += bench_query(args.proteins, args.dim, args.repeats)
    if not args.skip_aggregate:
        rows += bench_aggregate(args.cells, args.cell_dim, args.proteins, repeats=3)
    if not args.skip_throughput:
        n = {"tiny": 8 * args.throughput_cells, "paper": args.throughput_cells}
        rows += bench_throughput(args.methods, args.configs, n, args.batch_size, args.precisions)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'wall':>16}  {'CPU / cores':>16}  target")
    print(f"{'-' * width}  {'-' * 16}  {'-' * 16}  {'-' * 14}")
    for name, wall, cpu, target in rows:
        print(f"{name:<{width}}  {wall:>16}  {cpu:>16}  {target}")
    print(f"\n{CORES} CPU cores. 'CPU / cores': process CPU time over the cores, what the run "
          "would take with the machine to itself (a lower bound when not every core is used).")


if __name__ == "__main__":
    main()
