"""Simulator throughput: fields per second and peak memory, per preset and worker count.

Run: ``.venv/bin/python bench/simulate.py [--fields N] [--size PX] [--presets a,b]``.
Each row simulates a screen to a temporary folder with :func:`simulate_screen` (render,
OME-TIFF write, ground truth) and reports wall-clock throughput and the peak resident
memory of the main process and its workers (``ru_maxrss``, KiB on Linux). ``cpu ms/field``
is the CPU time of all processes (startup included) per field: on a shared, loaded machine
it tells the per-core cost better than wall-clock time does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from cellrep_ml.simulate import simulate_screen
preset, size, fields, workers, out = sys.argv[1:6]
size, fields, workers = int(size), int(fields), int(workers)
n_lines = 2
per = 4
n_prot = max(1, fields // (n_lines * per))
if preset == "allen3d":
    n_prot = max(1, fields // (n_lines * per) - 5)
res = simulate_screen(preset, Path(out), n_proteins=n_prot, n_cell_lines=n_lines,
                      fields_per_protein=per, seed=0, field_size=size, workers=workers)
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"fields": res.n_fields, "cells": res.n_cells, "seconds": res.seconds,
                  "peak_kib": max(me.ru_maxrss, kids.ru_maxrss), "cpu": cpu}))
"""


def _run(preset: str, size: int, fields: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", _CHILD, preset, str(size), str(fields),
                               str(workers), str(Path(tmp) / "screen")],
                              capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fields", type=int, default=240, help="fields per row (approximate)")
    ap.add_argument("--size", type=int, default=512, help="field size for the 2D presets")
    ap.add_argument("--size-3d", type=int, default=192, help="field size for allen3d")
    ap.add_argument("--presets", default="opencell,hpa,yeast,allen3d")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    print(f"{'preset':10} {'field':>12} {'workers':>7} {'fields':>6} {'cells/field':>11} "
          f"{'fields/s':>9} {'fields/min':>10} {'cpu ms/field':>12} {'peak RSS MiB':>12}")
    for preset in args.presets.split(","):
        size = args.size_3d if preset == "allen3d" else args.size
        shape = f"24x{size}x{size}" if preset == "allen3d" else f"{size}x{size}"
        for workers in (int(w) for w in args.workers.split(",")):
            r = _run(preset, size, args.fields, workers)
            fps = r["fields"] / r["seconds"]
            print(f"{preset:10} {shape:>12} {workers:>7} {r['fields']:>6} "
                  f"{r['cells'] / r['fields']:>11.1f} {fps:>9.2f} {fps * 60:>10.0f} "
                  f"{1000 * r['cpu'] / r['fields']:>12.0f} "
                  f"{r['peak_kib'] / 1024:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
