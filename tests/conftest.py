"""Shared fixtures: every test gets its own data home; tiny simulated screens are cached per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Point $CELLREP_HOME and $DAGSTER_HOME at the test's own folder."""
    home = tmp_path / "cellrep_home"
    monkeypatch.setenv("CELLREP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home


@pytest.fixture(scope="session")
def _tiny_opencell_master(tmp_path_factory) -> Path:
    from cellrep_ml.simulate import simulate_screen

    out = tmp_path_factory.mktemp("screens") / "tiny-opencell"
    simulate_screen("opencell", out, n_proteins=4, n_cell_lines=2, fields_per_protein=3,
                    seed=7, field_size=256, workers=1)
    return out


@pytest.fixture
def tiny_screen(_tiny_opencell_master, tmp_path) -> Path:
    """A fresh copy of a tiny simulated opencell screen (4 proteins x 2 cell lines x 3 fields)."""
    dst = tmp_path / "screen"
    shutil.copytree(_tiny_opencell_master, dst)
    return dst
