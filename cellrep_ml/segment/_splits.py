"""Train/val/test splits by field of view within each protein (cytoself, PCI practice)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import polars as pl

from cellrep_ml.io.schema import SPLITS

__all__ = ["assign_splits"]


def assign_splits(
    fields: pl.DataFrame,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> pl.DataFrame:
    """Assign each field of view to ``train``, ``val`` or ``test``, per protein.

    All cells of a field share its split, so no field feeds two splits (cells of one
    image are not independent). Within each protein the fields are shuffled by a
    generator seeded with ``(seed, crc32(protein))`` — so a protein's assignment does
    not change when other proteins are added — and cut by ``fractions``.

    Parameters
    ----------
    fields : polars.DataFrame
        Columns ``protein`` and ``field_id``, one row per field (duplicates ignored).
    seed : int
        Seed of the shuffles.
    fractions : (float, float, float)
        Train, val, test fractions, non-negative, summing to 1, train > 0.

    Returns
    -------
    polars.DataFrame
        ``field_id``, ``split``, one row per field.

    Raises
    ------
    ValueError
        If ``fractions`` is malformed or a column is missing.

    Notes
    -----
    Counts: a protein with n ≥ 3 fields gets ``round(n·f)`` fields for val and for test,
    at least one each when the fraction is positive, and the rest (≥ 1) for train, so
    every split is present (Kobayashi et al. 2021 split 8:1:1 with every protein in every
    split). With 2 fields: one train and one test (or val if the test fraction is 0);
    with 1 field: train.
    """
    fr = np.asarray(fractions, np.float64)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6 or fr[0] <= 0:
        raise ValueError(
            f"split fractions must be 3 non-negative numbers summing to 1 with train > 0, got {fractions}"
        )
    missing = {"protein", "field_id"} - set(fields.columns)
    if missing:
        raise ValueError(f"assign_splits: missing columns {sorted(missing)}")

    ids: list[str] = []
    splits: list[str] = []
    unique = fields.select("protein", "field_id").unique().sort("protein", "field_id")
    for (protein,), group in unique.group_by("protein", maintain_order=True):
        field_ids = group["field_id"].to_list()
        rng = np.random.default_rng([seed, zlib.crc32(str(protein).encode())])
        order = rng.permutation(len(field_ids))
        counts = _counts(len(field_ids), fr)
        labels = np.repeat(np.array(SPLITS), counts)
        ids.extend(field_ids[i] for i in order)
        splits.extend(labels.tolist())
    return pl.DataFrame({"field_id": ids, "split": splits}, schema={"field_id": pl.Utf8, "split": pl.Utf8})


def _counts(n: int, fr: np.ndarray) -> list[int]:
    """Fields per split (train, val, test) for a protein with ``n`` fields."""
    if n == 1:
        return [1, 0, 0]
    if n == 2:
        return [1, 0, 1] if fr[2] > 0 else ([1, 1, 0] if fr[1] > 0 else [2, 0, 0])
    val = max(1, round(n * fr[1])) if fr[1] > 0 else 0
    test = max(1, round(n * fr[2])) if fr[2] > 0 else 0
    # Give back from the larger held-out split until train has at least one field.
    while n - val - test < 1:
        if val >= test and val > 1:
            val -= 1
        else:
            test -= 1
    return [n - val - test, val, test]
