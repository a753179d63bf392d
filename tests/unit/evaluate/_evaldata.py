"""Synthetic evaluation data: noise (chance level) and planted structure, seeded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass
class CellData:
    """Cells of images of proteins, each protein with one term, for the Lu 2019 metrics."""

    features: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,) term of the cell's protein
    image_ids: np.ndarray  # (N,)
    proteins: np.ndarray  # (N,)
    cell_lines: np.ndarray  # (N,)
    annotations: pl.DataFrame  # protein -> term


def make_cells(*, planted: bool, n_terms: int = 3, proteins_per_term: int = 6,
               images_per_protein: int = 2, cells_per_image: int = 5, dim: int = 10,
               line_offset: float = 0.0, seed: int = 0) -> CellData:
    """Cells whose features are noise, or noise around a far-away centre per term.

    Images alternate between two cell lines; ``line_offset`` adds a shift per cell line.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(n_terms, dim))
    lines_shift = rng.normal(scale=line_offset, size=(2, dim)) if line_offset else np.zeros((2, dim))
    feats, labels, images, prots, lines, ann = [], [], [], [], [], []
    for t in range(n_terms):
        for p in range(proteins_per_term):
            protein = f"T{t}P{p}"
            ann.append((protein, f"term{t}"))
            for i in range(images_per_protein):
                line = i % 2
                x = rng.normal(size=(cells_per_image, dim))
                if planted:
                    x = x + centres[t]
                x = x + lines_shift[line]
                feats.append(x)
                labels += [f"term{t}"] * cells_per_image
                images += [f"{protein}_img{i}"] * cells_per_image
                prots += [protein] * cells_per_image
                lines += [f"line{line}"] * cells_per_image
    return CellData(np.concatenate(feats), np.array(labels), np.array(images), np.array(prots),
                    np.array(lines), pl.DataFrame(ann, schema=["protein", "term"], orient="row"))


def make_profiles(*, planted: bool, n_terms: int = 6, per_term: int = 10, dim: int = 20,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    """Protein profiles, single-annotated, random or tight around a centre per term."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_terms, dim))
    names, rows, ann = [], [], []
    for t in range(n_terms):
        for p in range(per_term):
            name = f"P{t:02d}{p:02d}"
            names.append(name)
            ann.append((name, f"term{t}"))
            noise = rng.normal(size=dim)
            rows.append(centres[t] + 0.05 * noise if planted else noise)
    return (np.array(rows), np.array(names),
            pl.DataFrame(ann, schema=["protein", "term"], orient="row"))


