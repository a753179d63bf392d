"""Session fixtures of synthetic cells for the evaluation tests."""

from __future__ import annotations

import pytest
from _evaldata import CellData, make_cells


@pytest.fixture(scope="session")
def noise_cells() -> CellData:
    # Labels independent of features: every score should sit at its chance level.
    return make_cells(planted=False, seed=1)


@pytest.fixture(scope="session")
def planted_cells() -> CellData:
    return make_cells(planted=True, seed=2)
