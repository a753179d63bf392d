"""Training throughput of the engine, every method × configuration, on this machine's CPU.

Each row runs :func:`cellrep_ml.train.train` end to end — crop store reads, pairing or
augmentation, forward, every loss term, backward, optimiser step — on a synthetic crops
partition at the model's native crop size, in its own subprocess so that the peak
resident memory is that row's alone. Batch sizes are the papers' (PCI 64, cytoself 32,
DeepLoc 128, cbvae 32). One example is one crop, except PCI where it is a (source, target)
pair; crops/s counts both cells of a pair.

Reference points (2 CPU cores): a plain PyTorch PCI trains at 10.6 pairs/s (batch 64);
the target for cytoself is ≥ 10 crops/s (batch 32). For PCI the bench measures that
reference side by side: ``plain`` rows train :class:`PlainPCI`, a straightforward
``nn.Sequential`` build of the same network (same layers and parameter count, no fusions),
in the same bare loop, once in PyTorch's default layout and once channels-last.

Usage::

    .venv/bin/python bench/train.py                      # every method, tiny and paper
    .venv/bin/python bench/train.py --methods pci --configs paper --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from cellrep_ml.io.crop_store import CropStoreWriter
from cellrep_ml.io.schema import CELL_INDEX_SCHEMA

# Native crop shape per (method, configuration) and the model overrides a bench needs.
SHAPES = {
    ("pci", "paper"): (64, 64), ("pci", "tiny"): (32, 32),
    ("cytoself", "paper"): (100, 100), ("cytoself", "tiny"): (48, 48),
    ("locclf", "paper"): (64, 64), ("locclf", "tiny"): (32, 32),
    # The 2D (z-projection) model; the 3D paper model is out of reach of a CPU bench.
    ("cbvae", "paper"): (96, 128), ("cbvae", "tiny"): (32, 32),
}
CHANNELS = ["GFP", "DAPI", "Membrane", "nucleus_distance"]


def roles(method: str) -> dict:
    """Yeast-like screens (protein + one marker) for PCI and DeepLoc, whose paper batch
    sizes come from yeast; cbvae's reference is membrane + DNA."""
    markers = ["Membrane"] if method == "cbvae" else []
    return {"protein": "GFP", "nucleus": "DAPI", "markers": markers, "segment_on": "DAPI"}


class PlainPCI(nn.Module):
    """The PCI paper network as anyone would write it (Lu et al. 2019; spec of issue 3).

    Source encoder: 3×3 convs 96 | pool | 256 | pool | 384, 384, 256, each followed by
    ReLU then batch norm; target-marker encoder 16 | pool | 32 | pool | 32; decoder 256,
    384, 384 | upsample | 256 | upsample | 96 (conv + ReLU), then a linear 1×1 conv to the
    protein channels. The reference the engine's PCI is compared with.
    """

    def __init__(self, protein: int = 1, markers: int = 1) -> None:
        super().__init__()

        def encoder(c_in: int, widths: tuple[int, ...], pool_after: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i, c_out in enumerate(widths):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
                           nn.BatchNorm2d(c_out, momentum=0.01, eps=1e-3)]
                if i < pool_after:
                    layers.append(nn.MaxPool2d(2))
                c_in = c_out
            return nn.Sequential(*layers)

        def conv_relu(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]

        self.protein = protein
        self.source = encoder(protein + markers, (96, 256, 384, 384, 256), pool_after=2)
        self.target = encoder(markers, (16, 32, 32), pool_after=2)
        self.decoder = nn.Sequential(
            *conv_relu(256 + 32, 256), *conv_relu(256, 384), *conv_relu(384, 384),
            nn.Upsample(scale_factor=2), *conv_relu(384, 256),
            nn.Upsample(scale_factor=2), *conv_relu(256, 96),
            nn.Conv2d(96, protein, 1))

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target = batch["target"]
        z = torch.cat([self.source(batch["source"]), self.target(target[:, self.protein:])], 1)
        mse = F.mse_loss(self.decoder(z), target[:, :self.protein])
        return {"loss": mse}


def _bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, data: dict, steps: int,
               warmup: int, cpu_amp: bool) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``steps`` optimiser steps on one preloaded batch."""
    wall, cpu = [], []
    for k in range(steps + warmup):
        w0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_amp):
            loss = model.compute_loss(data)["loss"]
        loss.backward()
        optimizer.step()
        if k >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return wall, cpu


def _memory_format(model: nn.Module, data: dict, channels_last: bool) -> dict:
    if not channels_last:
        return data
    model.to(memory_format=torch.channels_last)
    return {k: v.contiguous(memory_format=torch.channels_last)
            if v.ndim == 4 and v.is_floating_point() else v for k, v in data.items()}


def run_plain(steps: int, warmup: int, batch: int | None, channels_last: bool,
              cpu_amp: bool = False) -> dict:
    """The plain PCI build in the bare loop, on a random batch of the paper's shape."""
    torch.manual_seed(0)
    bs = batch or 64
    model = PlainPCI()
    data = _memory_format(model, {"source": torch.rand(bs, 2, 64, 64),
                                  "target": torch.rand(bs, 2, 64, 64)}, channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    wall, cpu = _bare_loop(model, optimizer, data, steps, warmup, cpu_amp)
    threads = torch.get_num_threads()
    return {"method": "pci-plain", "config": "cl" if channels_last else "nchw", "batch": bs,
            "shape": "64x64", "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": float(np.median(wall)), "examples_per_s": bs / float(np.median(wall)),
            "crops_per_s": 2 * bs / float(np.median(wall)),
            "cpu_examples_per_s": bs / (float(np.median(cpu)) / threads),
            "bare_examples_per_s": bs / float(np.median(wall)),
            "bare_cpu_examples_per_s": bs / (float(np.median(cpu)) / threads),
            "load_ms": 0.0, "peak_rss_MiB": _peak_rss_mib(), "load": os.getloadavg()[0]}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_partition(root: Path, method: str, shape: tuple[int, int], n_cells: int,
                        n_proteins: int, seed: int = 0) -> Path:
    """A crops partition of random crops, 8 cells per field, every field in train."""
    rng = np.random.default_rng(seed)
    out = root / "bench" / "line1"
    out.mkdir(parents=True)
    rows = []
    with CropStoreWriter(out / "crops.zarr", channel_names=CHANNELS, crop_shape=shape,
                         with_masks=False, attrs={"roles": roles(method)}) as w:
        for start in range(0, n_cells, 256):
            n = min(256, n_cells - start)
            x = rng.random((n, len(CHANNELS), *shape), dtype=np.float32)
            x[:, 3] = x[:, 3] * 2 - 1
            w.append(x)
    for i in range(n_cells):
        field = i // 8
        protein = f"P{field % n_proteins}"
        rows.append({"cell_id": f"c{i}", "crop_index": i, "dataset": "bench", "cell_line": "line1",
                     "plate": "p1", "well": protein, "field": field, "protein": protein,
                     "centroid_z": 0.0, "centroid_y": 0.0, "centroid_x": 0.0, "area": 1,
                     "mask_fraction": 0.3, "split": "train"})
    pl.DataFrame(rows, schema=CELL_INDEX_SCHEMA).write_parquet(out / "cells.parquet")
    labels = root / "labels.csv"
    labels.write_text("protein,label\n" + "".join(f"P{k},class{k % 4}\n" for k in range(n_proteins)))
    return out


def run_one(method: str, config: str, steps: int, warmup: int, batch: int | None,
            workers: int, cpu_amp: bool = False) -> dict:
    """Train ``warmup + steps`` steps through the engine and time the last ``steps``; then
    the same steps in a bare loop on one preloaded batch (the model's own cost).

    Wall time depends on what else runs on the machine; process CPU time (all threads)
    much less, so both are reported, and engine vs bare loop is compared on CPU time.
    """
    from cellrep_ml.models import build
    from cellrep_ml.train import TrainConfig, get_task, load_training_data, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = build(method, config, protein_channels=1,
                      marker_channels=2 if method == "cbvae" else 1)
        bs = batch or int(probe.config.batch_size)
        del probe
        part = synthetic_partition(tmp, method, SHAPES[(method, config)],
                                   bs * (steps + warmup) + 16, n_proteins=16)
        labels = str(tmp / "labels.csv")
        wall: list[float] = []
        cpu: list[float] = []

        def stamp(epoch: int, step: int) -> None:
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

        cfg = TrainConfig(method=method, config=config, crops=[str(part)], out=str(tmp / "run"),
                          batch_size=bs, max_steps=steps + warmup, epochs=1, num_workers=workers,
                          track=False, progress=False, labels=labels, cpu_amp=cpu_amp)
        train(cfg, on_step=stamp)
        engine_wall = np.diff(wall[warmup - 1:] if warmup else wall)
        engine_cpu = np.diff(cpu[warmup - 1:] if warmup else cpu)

        # The bare loop: same task, model and optimiser, one batch already in memory.
        task = get_task(method)(load_training_data([part]), seed=0, options={"labels": labels})
        model = build(method, config, **task.builder_kwargs())
        task.bind(model)
        optimizer = task.optimizer(model)
        plan = task.epoch_plan("train", 0)
        load_s = []
        for k in range(3):
            t0 = time.perf_counter()
            data = task.load_batch({key: v[k * bs:(k + 1) * bs] for key, v in plan.items()})
            load_s.append(time.perf_counter() - t0)
        # The engine's layout: channels-last for 2D models (TrainConfig.channels_last).
        data = _memory_format(model, data, len(task.input_shape or ()) == 2)
        bare_wall, bare_cpu = _bare_loop(model, optimizer, data, steps, warmup, cpu_amp)
        params = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    per_example = 2 if method == "pci" else 1
    step_s = float(np.median(engine_wall))
    cpu_s = float(np.median(engine_cpu))
    return {"method": method, "config": config, "batch": bs,
            "shape": "x".join(map(str, SHAPES[(method, config)])),
            "params_M": params / 1e6, "step_s": step_s,
            "examples_per_s": bs / step_s, "crops_per_s": bs * per_example / step_s,
            # What the step would take with the process's threads each on a free core.
            "cpu_examples_per_s": bs / (cpu_s / threads),
            "bare_examples_per_s": bs / float(np.median(bare_wall)),
            "bare_cpu_examples_per_s": bs / (float(np.median(bare_cpu)) / threads),
            "load_ms": 1e3 * float(np.median(load_s)),
            "peak_rss_MiB": _peak_rss_mib(), "load": os.getloadavg()[0]}


def _run_row(args: argparse.Namespace, what: list[str]) -> dict | str:
    """One bench row in a fresh subprocess (its own peak RSS); the median of ``--repeats``."""
    cmd = [sys.executable, __file__, *what, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--workers", str(args.workers)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.cpu_amp:
        cmd += ["--cpu-amp"]
    rows = []
    for _ in range(args.repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            return "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {k: float(np.median([r[k] for r in rows])) if isinstance(v, float) else v
            for k, v in rows[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["pci", "cytoself", "locclf", "cbvae"])
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per row, each in a fresh process (medians reported)")
    parser.add_argument("--batch", type=int, help="override the papers' batch sizes")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--cpu-amp", action="store_true",
                        help="bf16 autocast on the CPU (TrainConfig.cpu_amp)")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip the plain PyTorch PCI rows")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--plain", choices=["nchw", "cl"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        row = run_one(*args.one, args.steps, args.warmup, args.batch, args.workers, args.cpu_amp)
        print(json.dumps(row))
        return
    if args.plain:
        print(json.dumps(run_plain(args.steps, args.warmup, args.batch, args.plain == "cl",
                                   args.cpu_amp)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, DataLoader workers {args.workers}, "
          f"precision {'bf16 autocast' if args.cpu_amp else 'fp32'}, "
          f"medians of {args.repeats} run(s) × {args.steps} steps")
    header = (f"{'method':<10}{'config':<7}{'batch':>6}{'crop':>9}{'params(M)':>10}{'step(s)':>9}"
              f"{'ex/s':>8}{'crops/s':>9}{'ex/s@cpu':>10}{'bare':>7}{'bare@cpu':>10}"
              f"{'read ms':>9}{'RSS(MiB)':>10}{'load':>6}")
    print(header)
    print("-" * len(header))
    jobs = [(f"{m:<10}{c:<7}", ["--one", m, c]) for m in args.methods for c in args.configs]
    if "pci" in args.methods and "paper" in args.configs and not args.no_plain:
        jobs += [(f"{'pci-plain':<10}{fmt:<7}", ["--plain", fmt]) for fmt in ("nchw", "cl")]
    for name, what in jobs:
        r = _run_row(args, what)
        if isinstance(r, str):
            print(f"{name} {r}")
            continue
        print(f"{r['method']:<10}{r['config']:<7}{r['batch']:>6}{r['shape']:>9}"
              f"{r['params_M']:>10.2f}{r['step_s']:>9.2f}{r['examples_per_s']:>8.1f}"
              f"{r['crops_per_s']:>9.1f}{r['cpu_examples_per_s']:>10.1f}"
              f"{r['bare_examples_per_s']:>7.1f}{r['bare_cpu_examples_per_s']:>10.1f}"
              f"{r['load_ms']:>9.0f}{r['peak_rss_MiB']:>10.0f}{r['load']:>6.1f}",
              flush=True)
    print("ex/s: examples (PCI: pairs) per wall second through the engine; ex/s@cpu: per "
          "CPU second × threads (nearer an idle machine's rate); bare, bare@cpu: the same for "
          "a bare loop on a preloaded batch in the engine's layout; read ms: reading + "
          "assembling one batch from the store. pci-plain: the plain nn.Sequential build "
          "(PlainPCI), bare loop only, default layout (nchw) or channels-last (cl).")


if __name__ == "__main__":
    main()
