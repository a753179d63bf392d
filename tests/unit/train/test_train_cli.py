"""``python -m cellrep_ml.train``: help, clear errors, a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from click.testing import CliRunner

from cellrep_ml.train.__main__ import _parse_sets, main


def test_help_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "cellrep_ml.train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--method", "--crops", "--out", "--max-steps", "--set"):
        assert option in proc.stdout


def test_bad_input_exits_non_zero_with_a_message(partitions, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["--method", "pci", "--out", str(tmp_path / "o"),
                               "--crops", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(main, ["--method", "nope", "--out", str(tmp_path / "o"),
                               "--crops", str(partitions[0])])
    assert res.exit_code == 2 and "expected one of" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["--method", "pci", "--out", str(tmp_path / "o"), "--crops", str(empty)])
    assert res.exit_code == 1 and "cell index not found" in res.output
    res = runner.invoke(main, ["--method", "pci", "--config", "tiny", "--out", str(tmp_path / "o"),
                               "--crops", str(partitions[0]), "--set", "no_such_field=1",
                               "--no-track"])
    assert res.exit_code == 1 and "no_such_field" in res.output


def test_set_routes_keys():
    train_sets, model_sets = _parse_sets(("lr=3e-4", "model.lr=1", "crop_size=16",
                                          "widths=[8, 16]", "compile=true"))
    assert train_sets == {"lr": 3e-4, "compile": True}
    assert model_sets == {"lr": 1, "crop_size": 16, "widths": [8, 16]}


def test_tiny_end_to_end_run_writes_a_checkpoint(partitions, tmp_path):
    out = tmp_path / "run"
    args = ["--method", "pci", "--config", "tiny", "--out", str(out),
            "--crops", str(partitions[0]), "--crops", str(partitions[1]),
            "--epochs", "1", "--batch-size", "16", "--max-steps", "2", "--seed", "1",
            "--set", "crop_size=16", "--set", "source_stages=[[4],[8],[8,8,8]]",
            "--set", "num_workers=0", "--no-track", "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["finished"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2
    assert ckpt["config"]["model"]["crop_size"] == 16 and ckpt["config"]["seed"] == 1
    assert (out / "model.pt").exists() and (out / "config.json").exists()
