"""Benchmark: the crop pipeline against a naive scikit-image script, and its memory.

    .venv/bin/python bench/crops.py                 # defaults: 12 fields, 1024², ~400 nuclei
    .venv/bin/python bench/crops.py --fields 24 --rss-sizes 8 32

(a) ``crop_partition`` on 2-channel 1024×1024 TIFF fields (decode, smoothing, threshold,
    watershed split, QC, min–max, Zarr + Parquet writes), one worker process;
(b) a naive script on the same fields already in memory: Otsu, ``label``,
    ``regionprops``, crop, min–max, ``np.save``.
Both are timed in wall and CPU seconds; "per core" is cells per CPU second. The three
runs are repeated ``--repeats`` times, interleaved (pipeline, naive, naive per cell, then
again) so that background load on a shared machine hits all of them alike, each after an
``os.sync()`` so that none pays for the previous one's file writes; the table gives
medians, the ratio row the median of the per-repeat ratios. Then the pipeline runs in a
fresh process on two screen sizes and reports each one's peak RSS: memory should not grow
with the number of fields.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import tifffile

CHANNELS = ("GFP", "Hoechst")


def synthetic_field(rng: np.random.Generator, size: int, n_nuclei: int) -> np.ndarray:
    """(2, size, size) uint16: a protein channel and a nuclear channel with n_nuclei discs.

    Centres are at least 1.6 radii apart, so some nuclei touch (the watershed has work)
    and none overlap by more than a sliver.
    """
    nuc = np.zeros((size, size), np.float32)
    centres: list[tuple[float, float, float]] = []
    tries = 0
    while len(centres) < n_nuclei and tries < 50 * n_nuclei:
        tries += 1
        y, x = rng.uniform(0, size, 2)
        r = rng.uniform(8.5, 12.0)
        if centres:
            c = np.asarray(centres)
            if np.min(np.hypot(c[:, 0] - y, c[:, 1] - x) - 0.8 * (c[:, 2] + r)) < 0:
                continue
        centres.append((y, x, r))
        y0, y1 = max(0, int(y - r - 1)), min(size, int(y + r + 2))
        x0, x1 = max(0, int(x - r - 1)), min(size, int(x + r + 2))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        nuc[y0:y1, x0:x1][disc] = rng.uniform(0.6, 1.0)
    protein = rng.gamma(2.0, 1.0, (size, size)).astype(np.float32) * 200 + nuc * 800
    nuc = nuc * 3000 + 150 + rng.normal(0, 40, (size, size)).astype(np.float32)
    return np.stack([protein, nuc]).clip(0, 65535).astype(np.uint16)


def write_screen(root: Path, n_fields: int, size: int, n_nuclei: int, seed: int) -> pl.DataFrame:
    """Write n_fields OME-TIFFs one at a time and return their field-index rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_fields):
        protein = f"P{f % 4}"
        path = root / f"field_{f:04d}.ome.tif"
        tifffile.imwrite(path, synthetic_field(rng, size, n_nuclei), ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)}})
        rows.append({
            "field_id": f"bench/L/p1/{protein}/{f}", "row": f + 1, "dataset": "bench",
            "cell_line": "L", "plate": "p1", "well": protein, "field": f, "protein": protein,
            "path": path.name, "channels": "|".join(CHANNELS), "abs_paths": [str(path)],
            "format": "ome-tiff", "size_z": 1, "size_y": size, "size_x": size,
            "dtype": "uint16", "signature": "bench",
        })
    return pl.DataFrame(rows)


def screen_config(crop_size: int):
    from cellrep_ml.io.screen_config import ScreenConfig

    return ScreenConfig.from_dict({
        "dataset": "bench", "channels": {"protein": "GFP", "nucleus": "Hoechst"},
        "crop_size": crop_size, "min_cells_per_field": 5,
    })


def run_pipeline(index: pl.DataFrame, out: Path, crop_size: int) -> dict:
    from cellrep_ml.segment import crop_partition

    _settle_file_system()
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = crop_partition(index, screen_config(crop_size), out)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    segmented = result.n_cells + sum(result.rejected.values())
    return {"cells": result.n_cells, "segmented": segmented, "wall": wall, "cpu": cpu}


def run_naive(fields: list[np.ndarray], out: Path, crop_size: int, *,
              file_per_cell: bool = False) -> dict:
    """The script a scientist would write first: no smoothing, no split, no QC."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    _settle_file_system()
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = 0
    half = crop_size // 2
    for i, field in enumerate(fields):
        nuc = field[1]
        labels = label(nuc > threshold_otsu(nuc))
        padded = np.pad(field, ((0, 0), (half, half), (half, half)))
        crops = []
        for region in regionprops(labels):
            cy, cx = (int(round(c)) for c in region.centroid)
            crop = padded[:, cy:cy + crop_size, cx:cx + crop_size].astype(np.float32)
            lo = crop.min(axis=(1, 2), keepdims=True)
            hi = crop.max(axis=(1, 2), keepdims=True)
            crop = (crop - lo) / np.maximum(hi - lo, 1e-6)
            if file_per_cell:
                np.save(out / f"crop_{i:04d}_{region.label:05d}.npy", crop.astype(np.float16))
            crops.append(crop)
        if not file_per_cell:
            np.save(out / f"crops_{i:04d}.npy", np.stack(crops).astype(np.float16))
        n += len(crops)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"cells": n, "segmented": n, "wall": wall, "cpu": cpu}


def _settle_file_system() -> None:
    """Flush what earlier runs left to write, so that no run pays for the one before it.

    Without it the run after the naive per-cell script (thousands of small files written,
    then deleted) was billed 15-20 ms more kernel time per field for its own file writes.
    """
    os.sync()


def _obj_rate(run: dict) -> float:
    return run["segmented"] / run["cpu"]


def _median_run(runs: list[dict]) -> dict:
    """Per-key medians of repeated runs (counts are the same in every repeat)."""
    return {k: type(runs[0][k])(np.median([r[k] for r in runs])) for k in runs[0]}


def _peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss survives exec on Linux
    and would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(index_path: Path, out: Path, crop_size: int) -> None:
    """Entry point of a memory run: crop an existing screen, print peak RSS (MiB)."""
    index = pl.read_parquet(index_path)
    import cellrep_ml.segment  # noqa: F401  (imports are not the pipeline's memory)

    base = _peak_rss_mib()
    stats = run_pipeline(index, out, crop_size)
    peak = _peak_rss_mib()
    print(json.dumps({"fields": len(index), "cells": stats["cells"], "rss_before_mib": base,
                      "peak_rss_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--nuclei", type=int, default=400)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=(24, 96))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians)")
    parser.add_argument("--rss-child", type=Path, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(*args.rss_child, args.crop_size)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = write_screen(root, args.fields, args.size, args.nuclei, seed=0)
        fields = [tifffile.imread(p[0]) for p in index["abs_paths"].to_list()]
        run_pipeline(index.head(1), root / "warm", args.crop_size)  # imports, first-call costs
        runs: dict[str, list[dict]] = {"pipe": [], "naive": [], "cell": []}
        for r in range(args.repeats):
            runs["pipe"].append(run_pipeline(index, root / f"out{r}", args.crop_size))
            shutil.rmtree(root / f"out{r}")
            for key, per_cell in (("naive", False), ("cell", True)):
                out = root / f"{key}{r}"
                out.mkdir()
                runs[key].append(run_naive(fields, out, args.crop_size, file_per_cell=per_cell))
                shutil.rmtree(out)
        del fields
    pipe, naive, naive_files = (_median_run(runs[k]) for k in ("pipe", "naive", "cell"))

    print(f"\n{args.fields} fields of {args.size}×{args.size}×2, ~{args.nuclei} nuclei each, "
          f"crop {args.crop_size}; 1 process, {os.cpu_count()} CPUs on the machine; "
          f"median of {args.repeats} interleaved repeats\n")
    cols = [("pipeline", pipe), ("naive, npy/field", naive), ("naive, npy/cell", naive_files)]
    print(f"{'':30}" + "".join(f"{name:>18}" for name, _ in cols))
    print(f"{'input':30}" + "".join(f"{v:>18}" for v in ("TIFF files", "in memory", "in memory")))
    for key, label in [("segmented", "objects segmented"), ("cells", "cells written")]:
        print(f"{label:30}" + "".join(f"{r[key]:>18d}" for _, r in cols))
    for key, label in [("wall", "wall s"), ("cpu", "CPU s")]:
        print(f"{label:30}" + "".join(f"{r[key]:>18.2f}" for _, r in cols))
    print(f"{'cells written / CPU s':30}" + "".join(f"{r['cells'] / r['cpu']:>18.0f}" for _, r in cols))
    print(f"{'objects / CPU s':30}" + "".join(f"{r['segmented'] / r['cpu']:>18.0f}" for _, r in cols))
    ratios = [float(np.median([_obj_rate(p) / _obj_rate(o) for p, o in zip(runs["pipe"], runs[k], strict=True)]))
              for k in ("pipe", "naive", "cell")]
    print(f"{'pipeline speed / this (obj/s)':30}" + "".join(f"{x:>18.2f}" for x in ratios))

    print(f"\n{'fields':>8}{'cells':>10}{'peak RSS MiB':>14}{'RSS after imports MiB':>22}")
    for n in args.rss_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_screen(root, n, args.size, args.nuclei, seed=1).write_parquet(root / "fields.parquet")
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(root / "fields.parquet"),
                 str(root / "out"), "--crop-size", str(args.crop_size)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['fields']:>8}{r['cells']:>10}{r['peak_rss_mib']:>14.0f}{r['rss_before_mib']:>22.0f}")


if __name__ == "__main__":
    main()
