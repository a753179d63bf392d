"""Source/target cell pairs for paired cell inpainting (Lu et al., PLoS Comput Biol 2019).

Each epoch every eligible cell is a source exactly once, in a shuffled order; its target
is drawn uniformly among the *other* cells of the same image, so the two cells share the
tagged protein but differ in shape. Horizontal and vertical flips are drawn independently
for the source and for the target (the paper's augmentation), and each flip applies to all
channels of that cell.

An epoch is a pure function of ``(seed, epoch)``: the training engine checkpoints the
position (an index into the epoch's arrays) and resumes with
``sampler.epoch_pairs(epoch).skip(position)``, getting exactly the pairs it would have seen.

Examples
--------
>>> sampler = PairSampler(["img1", "img1", "img1", "img2", "img2", "img3"], seed=0)
>>> sampler.n_excluded_cells  # img3 has a single cell: it can be no one's pair
1
>>> pairs = sampler.epoch_pairs(0)
>>> sorted(pairs.source.tolist())
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import torch

__all__ = ["EpochPairs", "PairSampler", "apply_flips"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class EpochPairs(NamedTuple):
    """One epoch of pairs; row ``i`` of each array is the ``i``-th training example.

    Attributes
    ----------
    source : (N,) int64 ndarray
        Cell indices (into the sampler's ``groups``), each eligible cell exactly once.
    target : (N,) int64 ndarray
        Another cell of the same group as ``source[i]``.
    flips : (N, 2, 2) bool ndarray
        ``flips[i, 0]`` for the source, ``flips[i, 1]`` for the target; the last axis is
        (horizontal = flip W, vertical = flip H).
    """

    source: np.ndarray
    target: np.ndarray
    flips: np.ndarray

    def skip(self, position: int) -> EpochPairs:
        """The pairs from row ``position`` on: how a resumed run continues its epoch."""
        if not 0 <= position <= self.source.size:
            raise ValueError(f"position must be in [0, {self.source.size}]; got {position}")
        return EpochPairs(self.source[position:], self.target[position:], self.flips[position:])


class PairSampler:
    """Deterministic per-epoch pair sampler over cells grouped by image.

    Parameters
    ----------
    groups : (N_cells,) array-like
        Group id per cell (image / field of view, or well), any hashable dtype (int, str).
    seed : int
        Base seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.

    Attributes
    ----------
    eligible : (N,) int64 ndarray
        Indices of cells in groups with at least two cells.
    n_excluded_cells, n_excluded_groups : int
        Cells and groups left out because the group holds a single cell.

    Raises
    ------
    ValueError
        When no group has two cells (no pair can be formed).
    """

    def __init__(self, groups: Sequence | np.ndarray, seed: int) -> None:
        groups = np.asarray(groups)
        if groups.ndim != 1 or groups.size == 0:
            raise ValueError(f"groups must be a non-empty 1-D array of group ids; got shape {groups.shape}")
        self.seed = int(seed)
        self.n_cells = int(groups.size)
        _, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
        size_of_cell = counts[codes]
        self.n_excluded_groups = int(np.sum(counts == 1))
        self.n_excluded_cells = int(np.sum(size_of_cell == 1))
        self.eligible = np.flatnonzero(size_of_cell >= 2).astype(np.int64)
        if self.eligible.size == 0:
            raise ValueError(
                f"no image has two cells, so no source/target pair exists "
                f"({self.n_cells} cells in {counts.size} groups, all singletons)"
            )
        # Members of each group, contiguous: order[start[g] : start[g] + size[g]].
        self._order = np.argsort(codes, kind="stable").astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(self.n_cells, dtype=np.int64)
        rank[self._order] = np.arange(self.n_cells) - np.repeat(starts, counts)
        self._start = starts[codes]  # (N_cells,) start of each cell's group in _order
        self._size = size_of_cell  # (N_cells,)
        self._rank = rank  # (N_cells,) position of each cell within its group

    def __len__(self) -> int:
        """Pairs per epoch: one per eligible cell."""
        return int(self.eligible.size)

    def summary(self) -> dict[str, int]:
        """Counts for logging: cells, pairs per epoch, excluded cells and groups."""
        return {
            "cells": self.n_cells,
            "pairs_per_epoch": len(self),
            "excluded_cells": self.n_excluded_cells,
            "excluded_groups": self.n_excluded_groups,
        }

    def epoch_pairs(self, epoch: int) -> EpochPairs:
        """All pairs of ``epoch`` (a pure function of ``seed`` and ``epoch``).

        Parameters
        ----------
        epoch : int
            Non-negative epoch number.

        Returns
        -------
        EpochPairs
            ``(source, target, flips)`` with ``len(self)`` rows; ``.skip(position)`` resumes.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0; got {epoch}")
        rng = np.random.default_rng([self.seed, int(epoch)])
        source = rng.permutation(self.eligible)  # (N,)
        size, rank = self._size[source], self._rank[source]
        # Uniform over the size - 1 other members: draw among size - 1 slots, then skip
        # over the source's own slot.
        offset = np.floor(rng.random(source.size) * (size - 1)).astype(np.int64)
        offset += offset >= rank
        target = self._order[self._start[source] + offset]  # (N,)
        flips = rng.random((source.size, 2, 2)) < 0.5  # (N, source|target, h|v)
        return EpochPairs(source, target, flips)


def apply_flips(crops: ArrayT, flips: np.ndarray | torch.Tensor) -> ArrayT:
    """Flip each crop, all its channels alike.

    Parameters
    ----------
    crops : (B, C, H, W) ndarray or Tensor
    flips : (B, 2) bool array
        Per crop (horizontal = flip W, vertical = flip H), e.g. ``pairs.flips[i:j, 0]``.

    Returns
    -------
    (B, C, H, W) ndarray or Tensor
        A new array of the same type as ``crops``.
    """
    if crops.ndim != 4 or tuple(flips.shape) != (crops.shape[0], 2):
        raise ValueError(
            f"expected crops (B, C, H, W) and flips (B, 2); got {tuple(crops.shape)} "
            f"and {tuple(flips.shape)}"
        )
    if isinstance(crops, torch.Tensor):
        f = torch.as_tensor(flips, dtype=torch.bool, device=crops.device)
        h = f[:, 0].view(-1, 1, 1, 1)
        v = f[:, 1].view(-1, 1, 1, 1)
        out = torch.where(h, crops.flip(-1), crops)
        return torch.where(v, out.flip(-2), out)
    f = np.asarray(flips, dtype=bool)
    h = f[:, 0, None, None, None]
    v = f[:, 1, None, None, None]
    out = np.where(h, crops[..., ::-1], crops)
    return np.where(v, out[..., ::-1, :], out)
