"""Champion selection: a new model version replaces the champion only when it scores higher.

The score is the dataset's primary metric, the single-cell kNN classification of Lu et al.
(2019, Table 1): leave-one-out balanced accuracy at k = 11 (their headline k) of z-scored
features of held-out test cells, against protein-level localization classes from GO CC
annotations (:func:`cellrep_ml.simulate.localization_labels`: real annotations, never a
screen's ground truth, so the same protocol serves real and simulated screens). Proteins
annotated to several compartments are left out when at least two classes remain, as the
paper scored single-localized proteins.

Both versions are scored on the same cells in the same call (a seeded sample of at most
``max_cells`` test cells over every cell line), so neither score is stale when the data
grew since the champion was chosen. The scores and the decision are written as tags on
the registered versions (``cellrep.score.<metric>``, ``cellrep.selection``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cellrep_ml import model_registry as mr

__all__ = [
    "PRIMARY_METRIC",
    "ScoreSample",
    "Selection",
    "primary_score",
    "score_sample",
    "select_champion",
]

#: Name of the primary metric (tag ``cellrep.score.knn_bacc_k11``).
PRIMARY_METRIC = "knn_bacc_k11"
_K = 11


@dataclass(frozen=True)
class ScoreSample:
    """Test cells to score on: per partition folder, crop rows and their labels."""

    rows: dict[Path, np.ndarray]
    labels: np.ndarray
    n_classes: int


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_champion`."""

    model_name: str
    candidate_version: str
    champion_before: str | None
    champion_after: str
    candidate_score: float
    champion_score: float | None
    promoted: bool
    reason: str
    metric: str = PRIMARY_METRIC
    n_cells: int = 0
    n_classes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def score_sample(partitions: Sequence[str | Path], *, max_cells: int = 2000,
                 seed: int = 0) -> ScoreSample:
    """A seeded sample of labelled test cells over ``partitions`` (crops folders).

    Raises
    ------
    ValueError
        If fewer than two localization classes, or fewer than ``k + 1`` cells, remain.
    """
    from cellrep_ml.annotations import load_reference
    from cellrep_ml.simulate import localization_labels
    from cellrep_ml.train.data import open_partition

    frames = []
    for path in partitions:
        _, cells = open_partition(path)
        frames.append(cells.with_row_index("row").filter(pl.col("split") == "test")
                      .select("row", "protein", pl.lit(str(Path(path))).alias("path")))
    cells = pl.concat(frames)
    labels = localization_labels(load_reference(), cells["protein"].unique().to_list())
    single = labels.filter(pl.col("n_compartments") == 1)
    if single["label"].n_unique() >= 2:
        labels = single
    cells = cells.join(labels.select("protein", "label"), on="protein", how="inner")
    if cells.height > max_cells:
        cells = cells.sample(max_cells, seed=seed)
    cells = cells.sort("path", "row")
    n_classes = cells["label"].n_unique()
    if n_classes < 2 or cells.height <= _K:
        raise ValueError(f"cannot score: {cells.height} labelled test cells in {n_classes} "
                         "localization classes (need more than 11 cells and 2 classes)")
    rows = {Path(p): g["row"].to_numpy() for (p,), g in cells.group_by("path", maintain_order=True)}
    return ScoreSample(rows=rows, labels=cells["label"].to_numpy(), n_classes=n_classes)


def primary_score(model, config: dict, sample: ScoreSample, *, batch_size: int = 256) -> float:
    """kNN (k = 11) balanced accuracy of ``model``'s features on ``sample``."""
    from cellrep_ml.embed import embed_cells
    from cellrep_ml.evaluate.knn import knn_balanced_accuracy

    channels = config.get("data", {}).get("channels")
    feats = [embed_cells(model, path / "crops.zarr", indices=rows, channels=channels,
                         batch_size=batch_size) for path, rows in sample.rows.items()]
    x = np.concatenate(feats)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return float(knn_balanced_accuracy(x, sample.labels, ks=(_K,))[_K])


def select_champion(dataset: str, method: str, partitions: Sequence[str | Path], *,
                    home: Path | None = None, max_cells: int = 2000,
                    seed: int = 0) -> Selection:
    """Score the newest version against the champion; move ``champion`` if it wins.

    No champion yet: the newest version becomes champion. The candidate already the
    champion: nothing moves, its score is refreshed. Otherwise the alias moves only on a
    strictly higher score (a tie keeps the incumbent: no churn of downstream tables).

    Raises
    ------
    LookupError
        If the model has no registered version.
    """
    latest = mr.choose_version(dataset, method, home=home,
                               version=mr.newest_version(dataset, method, home=home))
    before = mr.champion_version(dataset, method, home=home)
    sample = score_sample(partitions, max_cells=max_cells, seed=seed)
    model, config = mr.load_version(latest, home=home)
    cand = primary_score(model, config, sample)
    champ = None
    if before is None:
        promoted, reason = True, "no champion yet"
    elif before == latest.version:
        promoted, reason = False, f"version {before} is already the champion"
    else:
        incumbent = mr.choose_version(dataset, method, home=home, version=before)
        model, config = mr.load_version(incumbent, home=home)
        champ = primary_score(model, config, sample)
        promoted = cand > champ
        reason = (f"{PRIMARY_METRIC} {cand:.4f} > {champ:.4f}" if promoted
                  else f"{PRIMARY_METRIC} {cand:.4f} <= champion's {champ:.4f}")
    after = latest.version if promoted else before
    tag = mr.score_tag(PRIMARY_METRIC)
    mr.set_tags(latest, tags={tag: f"{cand:.6f}",
                              "cellrep.selection": ("promoted: " if promoted else "not promoted: ")
                              + reason}, home=home)
    if champ is not None:
        mr.set_tags(latest.name, before, {tag: f"{champ:.6f}"}, home=home)
    if promoted:
        mr.set_champion(latest.name, latest.version, home=home)
    return Selection(model_name=latest.name, candidate_version=latest.version,
                     champion_before=before, champion_after=after, candidate_score=cand,
                     champion_score=champ, promoted=promoted, reason=reason,
                     n_cells=int(sample.labels.size), n_classes=sample.n_classes)

