"""The published figures: each one really printed in its paper, keyed like our results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cellrep_ml.evaluate.leaderboard import higher_is_better
from cellrep_ml.evaluate.published import (
    CLAIMS,
    KOBAYASHI_2021,
    LU_2019,
    PUBLISHED,
    RAZDAIBIEDINA_2022,
    published_frame,
)

PAPERS = Path("/work/shared/papers")
FILES = {LU_2019: "000_9c6521d9aabe0128.txt", KOBAYASHI_2021: "002_16983be4cd0662e5.txt",
         RAZDAIBIEDINA_2022: "003_669c8e2028709704.txt"}
METHODS = {"pci", "cytoself", "locclf", "cbvae", "autoencoder", "pci_random", "classic"}
ABLATIONS = {"cytoself_no_id"}


def test_keys_unique_and_values_finite():
    keys = [(f.method, f.evaluation, f.metric, f.k_or_param) for f in PUBLISHED]
    assert len(keys) == len(set(keys))
    for f in PUBLISHED:
        assert math.isfinite(f.value) and f.paper in FILES and f.source and f.note
        assert f.method in METHODS | ABLATIONS
        # Every published figure has a direction, so the leaderboard can rank beside it.
        assert higher_is_better(f.evaluation, f.metric) is not None
        if f.evaluation.startswith("knn"):
            assert 0 < f.value < 1  # stored as fractions, not percent
        if f.evaluation == "pairwise_distance":
            assert -1 <= f.value < 0


def _printed(value: float) -> list[str]:
    return [f"{value * 100:.2f}", f"{value:.4f}", f"{value:.3f}", f"{value:.1f}", repr(value)]


@pytest.mark.skipif(not PAPERS.is_dir(), reason="papers folder not available")
def test_every_number_is_printed_in_its_paper():
    """No invented numbers: each value (and sd) appears verbatim in the paper's text."""
    texts = {paper: (PAPERS / name).read_text(encoding="utf-8") for paper, name in FILES.items()}
    for f in PUBLISHED:
        text = texts[f.paper]
        assert any(s in text for s in _printed(f.value)), (f, _printed(f.value))
        if f.sd is not None:
            assert any(s in text for s in _printed(f.sd)), f


def test_claims_name_known_methods_and_published_evidence():
    for c in CLAIMS:
        assert c.better in METHODS and set(c.worse) <= METHODS | ABLATIONS
        assert c.paper in FILES and c.published and c.params
        assert higher_is_better(c.evaluation, c.metric) == c.higher_is_better


def test_published_frame_schema():
    frame = published_frame()
    assert frame.height == len(PUBLISHED)
    assert frame.columns == ["method", "evaluation", "metric", "k_or_param", "value", "sd",
                             "paper", "source", "note"]
    row = frame.filter((frame["method"] == "pci") & (frame["k_or_param"] == "k=11")).row(0, named=True)
    assert row["value"] == pytest.approx(0.8798) and row["source"].startswith("Fig 2A")
