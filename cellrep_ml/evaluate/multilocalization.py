"""Single-cell multi-localization score and image variability ranking (Lu et al. 2019, Fig. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from cellrep_ml.errors import InputError
from cellrep_ml.evaluate._validation import check_labels, check_matrix, check_vector

__all__ = ["multilocalization_scores", "variability_ranking"]


def multilocalization_scores(
    features: np.ndarray,
    reference_a: np.ndarray,
    reference_b: np.ndarray,
) -> np.ndarray:
    """Log distance ratio of each cell to two compartment means (Lu et al. 2019, Fig. 5).

    With ``mu_A`` and ``mu_B`` the mean feature vectors of the cells in images annotated
    to compartment A only and B only, each cell ``f`` scores

    ``s(f) = log(||f - mu_A||_2 / ||f - mu_B||_2)``  (natural log).

    Negative means closer to A, positive closer to B, 0 equidistant; cells of A-and-B
    images are expected near 0. Antisymmetric: swapping A and B negates every score.

    Parameters
    ----------
    features : (N, D) ndarray
        Cells to score (any mix of A-only, B-only and A-and-B cells).
    reference_a, reference_b : (N_A, D), (N_B, D) ndarray
        Features of the cells of A-only and B-only images.

    Returns
    -------
    scores : (N,) float64 ndarray
        ``-inf`` for a cell exactly at ``mu_A``, ``+inf`` exactly at ``mu_B`` (the log of a
        zero ratio); finite otherwise.

    Raises
    ------
    ValueError
        Non-finite inputs, mismatched feature dimensions, or ``mu_A == mu_B``.

    Notes
    -----
    Features are used as given (the paper uses conv3 features of the human model and does
    not mention standardisation); z-score them beforehand if desired, with statistics
    shared by all three arrays.

    References
    ----------
    Lu et al. PLoS Comput Biol 15(9): e1007348 (2019), Methods "multi-localization"
    score and Fig. 5 (cytosol vs nucleoplasm, nucleoli vs nucleus).
    """
    x = check_matrix(features, "features")
    a = check_matrix(reference_a, "reference_a")
    b = check_matrix(reference_b, "reference_b")
    for name, arr in (("reference_a", a), ("reference_b", b)):
        if arr.shape[1] != x.shape[1]:
            raise InputError(f"{name} has a different feature dimension",
                             expected=f"{x.shape[1]} columns", received=f"{arr.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    if np.array_equal(mu_a, mu_b):
        raise InputError("reference_a and reference_b have the same mean",
                         expected="two distinct compartment means")
    d_a = np.linalg.norm(x - mu_a, axis=1)
    d_b = np.linalg.norm(x - mu_b, axis=1)
    with np.errstate(divide="ignore"):
        return np.log(d_a) - np.log(d_b)


def variability_ranking(
    scores: np.ndarray,
    image_ids: Sequence | np.ndarray,
    *,
    min_cells: int = 2,
) -> pl.DataFrame:
    """Rank images by the spread of their cells' multi-localization scores (Lu et al. 2019, Fig. 5).

    Images whose cells disagree (some closer to A, some to B) have a large standard
    deviation of ``s`` and are candidates for single-cell variability.

    Parameters
    ----------
    scores : (N,) ndarray
        Finite per-cell scores from :func:`multilocalization_scores`.
    image_ids : (N,) array-like
        Image of each cell.
    min_cells : int
        Images with fewer cells are left out (a spread needs >= 2 cells).

    Returns
    -------
    pl.DataFrame
        ``image`` (as string), ``n_cells``, ``mean``, ``std`` (sample, ddof = 1), ``rank`` (1 = most
        variable), sorted by decreasing ``std``; ties by image id.

    References
    ----------
    Lu et al. PLoS Comput Biol 15(9): e1007348 (2019), "single-cell variability".
    """
    s = check_vector(scores, "scores")
    img = check_labels(image_ids, "image_ids", s.size)
    if min_cells < 2:
        raise InputError("min_cells too small", expected=">= 2", received=str(min_cells))
    table = (pl.DataFrame({"image": img.astype(str), "s": s})
             .group_by("image")
             .agg(pl.len().alias("n_cells"), pl.col("s").mean().alias("mean"),
                  pl.col("s").std(ddof=1).alias("std"))
             .filter(pl.col("n_cells") >= min_cells)
             .sort(["std", "image"], descending=[True, False]))
    return table.with_columns(pl.int_range(1, pl.len() + 1).alias("rank"))
