"""Normalised average pairwise distance between cells of same-term images (Lu et al. 2019, Fig. 2B, Table 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.spatial.distance import cdist

from cellrep_ml.errors import InputError
from cellrep_ml.evaluate._validation import (
    check_annotations,
    check_labels,
    check_matrix,
    zscore_columns,
)

__all__ = [
    "PairwiseDistanceResult",
    "ImageDistances",
    "single_term_proteins",
    "pairwise_distance_scores",
    "cell_line_distance_scores",
]


@dataclass(frozen=True)
class PairwiseDistanceResult:
    """Per-term normalised pairwise distances and their overall mean.

    Attributes
    ----------
    per_term : pl.DataFrame
        One row per term: ``term``, ``n_proteins``, ``n_images``, ``d_same`` (mean
        image-to-image distance of same-term pairs), ``d_diff`` (mean over the pairs with
        every other term), ``score = (d_same - d_diff) / d_diff``.
    overall : float
        Mean of the per-term scores (every term weighted equally, as the balanced sampling
        intends).
    """

    per_term: pl.DataFrame
    overall: float


class ImageDistances:
    """Mean cross-image cell distance, ``D(I, J) = mean_{a in I, b in J} ||f_a - f_b||_2``.

    Parameters
    ----------
    features : (N, D) ndarray
        Single-cell features (already z-scored if wanted).
    image_index : (N,) int ndarray
        Image of each cell as an index in ``[0, n_images)``.

    Notes
    -----
    Distances are computed on demand and cached per unordered image pair, so repeated
    draws of the same pair cost nothing.
    """

    def __init__(self, features: np.ndarray, image_index: np.ndarray) -> None:
        order = np.argsort(image_index, kind="stable")
        self._x = features[order]
        n_images = int(image_index.max()) + 1
        counts = np.bincount(image_index, minlength=n_images)
        self._start = np.concatenate([[0], np.cumsum(counts)])
        self._cache: dict[tuple[int, int], float] = {}

    def __call__(self, i: int, j: int) -> float:
        key = (i, j) if i <= j else (j, i)
        hit = self._cache.get(key)
        if hit is None:
            a = self._x[self._start[i]:self._start[i + 1]]
            b = self._x[self._start[j]:self._start[j + 1]]
            hit = float(cdist(a, b).mean())
            self._cache[key] = hit
        return hit

    def many(self, pairs: np.ndarray) -> np.ndarray:
        """Distances of an ``(M, 2)`` array of image-index pairs, as ``(M,)``."""
        return np.fromiter((self(int(i), int(j)) for i, j in pairs), dtype=np.float64,
                           count=len(pairs))


def single_term_proteins(annotations: pl.DataFrame, *, min_proteins: int = 30,
                         protein_col: str = "protein", term_col: str = "term") -> pl.DataFrame:
    """Proteins annotated with exactly one term, that term held by >= ``min_proteins`` of them.

    Lu et al. 2019 (Methods, "Comparing pairwise distances") keep "proteins that only had a
    single localization term shared by at least 30 proteins" (18 HPA terms).

    Parameters
    ----------
    annotations : pl.DataFrame
        One row per (protein, term); other columns ignored.
    min_proteins : int
        Minimum number of single-term proteins per kept term.

    Returns
    -------
    pl.DataFrame
        Columns ``protein``, ``term`` (one row per kept protein), sorted.
    """
    ann = check_annotations(annotations, "annotations", protein_col, term_col)
    single = ann.filter(pl.len().over("protein") == 1)
    return (single.filter(pl.len().over("term") >= min_proteins).sort("term", "protein"))


def _relative(d_same: float, d_diff: float) -> float:
    """``(d_same - d_diff) / d_diff``; a zero expectation means every cell is identical."""
    if d_diff == 0.0:
        raise InputError("features: every sampled cell has the same feature vector",
                         expected="features that vary between cells")
    return (d_same - d_diff) / d_diff


def _image_table(image_ids: np.ndarray, proteins: np.ndarray,
                 cell_lines: np.ndarray | None) -> tuple[np.ndarray, pl.DataFrame]:
    """Index images and check that each image holds one protein (and one cell line)."""
    cols = {"image": image_ids.astype(str), "protein": proteins.astype(str)}
    if cell_lines is not None:
        cols["cell_line"] = cell_lines.astype(str)
    cells = pl.DataFrame(cols)
    per_image = cells.unique(maintain_order=True).sort("image")
    dup = per_image.filter(pl.len().over("image") > 1)
    if dup.height:
        what = "protein and cell line" if cell_lines is not None else "protein"
        raise InputError(f"image_ids: image {dup['image'][0]!r} mixes several values of {what}",
                         expected="one protein (and cell line) per image")
    per_image = per_image.with_row_index("image_index")
    image_index = (cells.join(per_image.select("image", "image_index"), on="image", how="left")
                   ["image_index"].to_numpy().astype(np.int64))
    return image_index, per_image


def _prepare(features, image_ids, proteins, cell_lines, zscore):
    x = check_matrix(features, "features", min_rows=2)
    n = x.shape[0]
    img = check_labels(image_ids, "image_ids", n)
    prot = check_labels(proteins, "proteins", n)
    lines = None if cell_lines is None else check_labels(cell_lines, "cell_lines", n)
    if zscore:
        x = zscore_columns(x)  # over every cell given, as the paper scales all cells
    image_index, images = _image_table(img, prot, lines)
    return ImageDistances(x, image_index), images


def pairwise_distance_scores(
    features: np.ndarray,
    image_ids: Sequence | np.ndarray,
    proteins: Sequence | np.ndarray,
    annotations: pl.DataFrame,
    *,
    min_proteins: int = 30,
    n_pairs: int = 1000,
    seed: int = 0,
    zscore: bool = True,
    protein_col: str = "protein",
    term_col: str = "term",
) -> PairwiseDistanceResult:
    """Normalised average pairwise distance per localization term (Lu et al. 2019, Fig. 2B).

    For images ``I, J`` the distance is ``D(I, J) = mean_{a in I, b in J} ||f_a - f_b||_2``
    over z-scored single-cell features. For a term ``t``, ``n_pairs`` random pairs of
    distinct proteins both with term ``t`` give ``d_same``; ``n_pairs`` random pairs
    (protein with ``t``, protein with ``u``) for *each* other term ``u`` give the
    expectation ``d_diff``. Each protein of a pair contributes one of its images, drawn
    uniformly. The score is

    ``score_t = (d_same - d_diff) / d_diff``,

    in ``[-1, inf)``: 0 when same-term cells are no closer than chance, negative when
    they are closer (more negative is better).

    Parameters
    ----------
    features : (N, D) ndarray
        Single-cell features; NaN/inf rejected.
    image_ids : (N,) array-like
        Image (field of view) of each cell; an image holds one protein.
    proteins : (N,) array-like
        Protein of each cell.
    annotations : pl.DataFrame
        Protein-to-term table (``protein_col``, ``term_col``), e.g. GO CC terms.
    min_proteins : int
        Keep proteins with a single term held by at least this many such proteins
        (30 in the paper, giving 18 HPA terms). At least 2 terms must survive.
    n_pairs : int
        Pairs drawn for the same-term set and for each other term (1,000 in the paper).
    seed : int
        Seed of the pair sampling.
    zscore : bool
        Standardise features over all given cells first (the paper does).

    Returns
    -------
    PairwiseDistanceResult
        ``per_term`` frame and the ``overall`` mean score.

    Raises
    ------
    ValueError
        Non-finite features, mismatched lengths, an image with several proteins, or fewer
        than 2 eligible terms among the proteins imaged.

    Notes
    -----
    The paper says distances are "normalized to an expectation of the average pairwise
    distance between images with different localization terms"; we take the relative
    difference above, the most plausible reading (see IMPLEMENTATION_NOTES). Pairs are
    drawn with replacement. "Overall" is the unweighted mean over terms.

    References
    ----------
    Lu et al. PLoS Comput Biol 15(9): e1007348 (2019), Methods "Comparing pairwise
    distances in feature spaces"; Fig. 2B (conv3 -0.574, conv4 -0.349 overall).
    """
    if min_proteins < 2:
        raise InputError("min_proteins too small", expected=">= 2", received=str(min_proteins))
    if n_pairs < 1:
        raise InputError("n_pairs must be positive", expected=">= 1", received=str(n_pairs))
    dist, images = _prepare(features, image_ids, proteins, None, zscore)
    kept = single_term_proteins(annotations, min_proteins=1, protein_col=protein_col,
                                term_col=term_col)
    # Only proteins that were imaged count towards the threshold.
    kept = kept.join(images.select("protein").unique(), on="protein", how="semi")
    kept = kept.filter(pl.len().over("term") >= min_proteins)
    terms = kept["term"].unique().sort().to_list()
    if len(terms) < 2:
        raise InputError("annotations: too few terms with enough single-term proteins",
                         expected=f">= 2 terms each held by >= {min_proteins} imaged proteins",
                         received=f"{len(terms)} term(s)")
    # Images of each kept protein, as arrays of image indices.
    by_protein = (images.join(kept, on="protein", how="inner")
                  .group_by("protein", maintain_order=True).agg(pl.col("image_index")))
    imgs_of = {p: np.asarray(ix, dtype=np.int64)
               for p, ix in zip(by_protein["protein"], by_protein["image_index"], strict=True)}
    prots_of = {t: kept.filter(pl.col("term") == t)["protein"].to_list() for t in terms}

    rng = np.random.default_rng(seed)

    def draw_images(prot_list: list[str], idx: np.ndarray) -> np.ndarray:
        out = np.empty(idx.size, dtype=np.int64)
        for m, pi in enumerate(idx):
            choices = imgs_of[prot_list[pi]]
            out[m] = choices[rng.integers(choices.size)]
        return out

    rows = []
    for t in terms:
        pt = prots_of[t]
        a = rng.integers(len(pt), size=n_pairs)
        b = (a + rng.integers(1, len(pt), size=n_pairs)) % len(pt)  # a distinct partner
        same = dist.many(np.stack([draw_images(pt, a), draw_images(pt, b)], axis=1))
        diffs = []
        for u in terms:
            if u == t:
                continue
            pu = prots_of[u]
            a = rng.integers(len(pt), size=n_pairs)
            b = rng.integers(len(pu), size=n_pairs)
            diffs.append(dist.many(np.stack([draw_images(pt, a), draw_images(pu, b)], axis=1)))
        d_same = float(same.mean())
        d_diff = float(np.concatenate(diffs).mean())
        n_img = int(sum(imgs_of[p].size for p in pt))
        rows.append((t, len(pt), n_img, d_same, d_diff, _relative(d_same, d_diff)))
    per_term = pl.DataFrame(rows, schema=["term", "n_proteins", "n_images", "d_same", "d_diff",
                                          "score"], orient="row")
    return PairwiseDistanceResult(per_term=per_term, overall=float(per_term["score"].mean()))


def _draw_constrained(rng: np.random.Generator, term: np.ndarray, line: np.ndarray,
                      prot: np.ndarray, *, same_term: bool, same_line: bool,
                      n_pairs: int) -> np.ndarray:
    """Draw image pairs of distinct proteins under a (same/different term, line) constraint.

    The first image is uniform among images that have at least one valid partner, the
    second uniform among its valid partners.
    """
    n = term.size

    # Valid partners per image from group sizes (inclusion-exclusion). Every protein has
    # a single term, so a different term implies a different protein.
    def size(*keys: np.ndarray) -> np.ndarray:
        stacked = np.stack(keys, axis=1)
        _, inv, cnt = np.unique(stacked, axis=0, return_inverse=True, return_counts=True)
        return cnt[inv.ravel()]

    n_t, n_l, n_tl = size(term), size(line), size(term, line)
    n_tp, n_tlp = size(term, prot), size(term, line, prot)
    if same_term and same_line:
        valid = n_tl - n_tlp
    elif same_term:
        valid = n_t - n_tl - n_tp + n_tlp
    elif same_line:
        valid = n_l - n_tl
    else:
        valid = n - n_t - n_l + n_tl
    firsts = np.flatnonzero(valid > 0)
    if firsts.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.empty((n_pairs, 2), dtype=np.int64)
    for m, i in enumerate(rng.choice(firsts, size=n_pairs)):
        ok = (prot != prot[i]) & ((term == term[i]) == same_term) & ((line == line[i]) == same_line)
        cand = np.flatnonzero(ok)
        pairs[m] = (i, cand[rng.integers(cand.size)])
    return pairs


def cell_line_distance_scores(
    features: np.ndarray,
    image_ids: Sequence | np.ndarray,
    proteins: Sequence | np.ndarray,
    cell_lines: Sequence | np.ndarray,
    annotations: pl.DataFrame,
    *,
    min_proteins: int = 30,
    n_pairs: int = 10_000,
    seed: int = 0,
    zscore: bool = True,
    protein_col: str = "protein",
    term_col: str = "term",
) -> pl.DataFrame:
    """Same- vs different-cell-line control of the pairwise distance score (Lu et al. 2019, Table 2).

    For each condition (both images from the same cell line / from different cell lines),
    ``n_pairs`` image pairs of distinct proteins with the same term give ``d_same`` and
    ``n_pairs`` image pairs with different terms (any other term, not balanced) give
    ``d_diff``, both under the condition; ``score = (d_same - d_diff) / d_diff``. Image
    distances are as in :func:`pairwise_distance_scores`. A robust feature set keeps its
    score when cell lines differ (small ``difference``).

    Parameters
    ----------
    features, image_ids, proteins, annotations, min_proteins, zscore
        As in :func:`pairwise_distance_scores`.
    cell_lines : (N,) array-like
        Cell line of each cell; an image holds one cell line.
    n_pairs : int
        Pairs per set (10,000 in the paper).
    seed : int
        Seed of the pair sampling.

    Returns
    -------
    pl.DataFrame
        Rows ``same_cell_line`` and ``different_cell_line`` with columns ``condition``,
        ``n_pairs_same``, ``n_pairs_diff``, ``d_same``, ``d_diff``, ``score``; a condition
        with no valid pairs has null distances and score.

    Notes
    -----
    The paper draws "random protein pairs"; we draw image pairs of distinct proteins
    (first image uniform among those with a valid partner, partner uniform), which is the
    same up to the weighting of proteins with many images. Table 2 compares terms of the
    same set of single-term proteins as Fig. 2B.

    References
    ----------
    Lu et al. PLoS Comput Biol 15(9): e1007348 (2019), Methods and Table 2
    (conv3 -0.4855 same / -0.3953 different cell lines).
    """
    if n_pairs < 1:
        raise InputError("n_pairs must be positive", expected=">= 1", received=str(n_pairs))
    dist, images = _prepare(features, image_ids, proteins, cell_lines, zscore)
    kept = single_term_proteins(annotations, min_proteins=1, protein_col=protein_col,
                                term_col=term_col)
    kept = kept.join(images.select("protein").unique(), on="protein", how="semi")
    kept = kept.filter(pl.len().over("term") >= min_proteins)
    eligible = images.join(kept, on="protein", how="inner").sort("image_index")
    if eligible["term"].n_unique() < 2:
        raise InputError("annotations: too few terms with enough single-term proteins",
                         expected=f">= 2 terms each held by >= {min_proteins} imaged proteins",
                         received=f"{eligible['term'].n_unique()} term(s)")
    image_index = eligible["image_index"].to_numpy()
    codes = [eligible[c].rank("dense").to_numpy().astype(np.int64)
             for c in ("term", "cell_line", "protein")]
    rng = np.random.default_rng(seed)
    rows = []
    for condition, same_line in (("same_cell_line", True), ("different_cell_line", False)):
        sets = []
        for same_term in (True, False):
            local = _draw_constrained(rng, *codes, same_term=same_term, same_line=same_line,
                                      n_pairs=n_pairs)
            sets.append(dist.many(image_index[local]) if local.size else np.empty(0))
        same, diff = sets
        if same.size and diff.size:
            d_same, d_diff = float(same.mean()), float(diff.mean())
            score: float | None = _relative(d_same, d_diff)
        else:
            d_same = d_diff = score = None
        rows.append((condition, int(same.size), int(diff.size), d_same, d_diff, score))
    return pl.DataFrame(rows, schema={"condition": pl.String, "n_pairs_same": pl.Int64,
                                      "n_pairs_diff": pl.Int64, "d_same": pl.Float64,
                                      "d_diff": pl.Float64, "score": pl.Float64}, orient="row")
