"""The seed papers' published figures and the rankings they claim, each with its citation.

Every number below is copied from the paper texts in the project's papers folder (Lu et
al. 2019 published version; Kobayashi et al. 2021 bioRxiv; Razdaibiedina & Brechalov
2022); the ``source`` names the table or figure. Numbers read off bar charts are *not*
included. Each figure is keyed like our results (``evaluation``, ``metric``,
``k_or_param``) so the leaderboard can put it beside our number; ``method`` is our method
whose protocol matches the published feature set, and ``note`` says how close the match
is (the papers' data are yeast or HPA/OpenCell screens, not ours: compare rankings, not
values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

__all__ = ["CLAIMS", "PUBLISHED", "Claim", "PublishedFigure", "published_frame"]

LU_2019 = "Lu et al. 2019, PLoS Comput Biol 15(9): e1007348"
KOBAYASHI_2021 = "Kobayashi et al. 2021, bioRxiv 2021.03.29.437595"
RAZDAIBIEDINA_2022 = "Razdaibiedina & Brechalov 2022, ICLR MLDD workshop"


@dataclass(frozen=True)
class PublishedFigure:
    """One published number, keyed like a row of ``evaluation_results``.

    Attributes
    ----------
    method : str
        Our method whose features correspond to the paper's feature set.
    evaluation, metric, k_or_param : str
        The result it sits beside (``k_or_param`` may be ``None``).
    value : float
        In our units (fractions, not percent).
    sd : float or None
        Published spread, when given.
    paper, source : str
        Citation and table/figure.
    note : str
        The paper's feature set and data, and how it maps to ours.
    """

    method: str
    evaluation: str
    metric: str
    k_or_param: str | None
    value: float
    sd: float | None
    paper: str
    source: str
    note: str


def _lu(method, evaluation, metric, param, value, source, note):
    return PublishedFigure(method, evaluation, metric, param, value, None, LU_2019, source, note)


PUBLISHED: tuple[PublishedFigure, ...] = (
    # Single-cell kNN (k = 11), balanced accuracy, yeast test set (Fig 2A, Table 1).
    _lu("pci", "knn", "balanced_accuracy", "k=11", 0.8798, "Fig 2A / Table 1",
        "PCI conv4, yeast (our default layer is conv3 for human-like screens)"),
    _lu("autoencoder", "knn", "balanced_accuracy", "k=11", 0.4250, "Fig 2A",
        "autoencoder with PCI's source encoder, yeast"),
    _lu("classic", "knn", "balanced_accuracy", "k=11", 0.6815, "Fig 2A",
        "CellProfiler features of Chong et al., yeast (Handfield features: 0.6204)"),
    _lu("locclf", "knn", "balanced_accuracy", "k=11", 0.9239, "Fig 2A",
        "supervised DeepLoc (Kraus et al. 2017), last FC layer before the classifier, yeast"),
    *(_lu("pci", "knn_layer", "balanced_accuracy", f"layer={layer},k=11", value, "Table 1",
          f"PCI {layer}, yeast")
      for layer, value in (("conv1", 0.4309), ("conv2", 0.7052), ("conv3", 0.8430),
                           ("conv4", 0.8798), ("conv5", 0.8189))),
    # Normalised pairwise distance, overall, HPA (Fig 2B): more negative is better.
    _lu("pci", "pairwise_distance", "score_overall", None, -0.574, "Fig 2B",
        "PCI conv3 (our default layer for human-like screens), HPA; conv4: -0.349"),
    _lu("autoencoder", "pairwise_distance", "score_overall", None, -0.281, "Fig 2B",
        "autoencoder, HPA"),
    _lu("classic", "pairwise_distance", "score_overall", None, -0.274, "Fig 2B",
        "classic computer-vision features, HPA"),
    # Same vs different cell line (Table 2), differently normalised from Fig 2B.
    *(_lu(m, "cell_line_control", metric, None, v, "Table 2", note)
      for m, note, same, diff in (
          ("pci", "PCI conv3, HPA", -0.4855, -0.3953),
          ("autoencoder", "autoencoder, HPA", -0.2486, -0.0965),
          ("classic", "classic features, HPA", -0.3027, -0.1813))
      for metric, v in (("score_same_cell_line", same), ("score_different_cell_line", diff),
                        ("difference", round(diff - same, 4)))),
    # Clustering score Gamma, median reading (the paper's formula), 5 models x 10 UMAPs.
    PublishedFigure("cytoself", "clustering_score", "gamma_median", None, 13.3, 2.4,
                    KOBAYASHI_2021, "Table 1",
                    "full cytoself, OpenCell, hand-picked proteins with one localization"),
    PublishedFigure("cytoself_no_id", "clustering_score", "gamma_median", None, 0.564, 0.14,
                    KOBAYASHI_2021, "Table 1", "cytoself without the protein-ID pretext task"),
)


@dataclass(frozen=True)
class Claim:
    """A ranking a paper claims, checked on our results by the leaderboard.

    ``better`` should beat each of ``worse`` on the result (``evaluation``, ``metric``,
    ``k_or_param``); ``higher_is_better`` gives the direction. ``params`` lists several
    results that must all hold (e.g. the four functional standards).
    """

    name: str
    paper: str
    source: str
    better: str
    worse: tuple[str, ...]
    evaluation: str
    metric: str
    params: tuple[str | None, ...]
    higher_is_better: bool
    published: str


CLAIMS: tuple[Claim, ...] = (
    Claim("PCI above autoencoder and classic features (kNN)", LU_2019, "Fig 2A",
          "pci", ("autoencoder", "classic"), "knn", "balanced_accuracy", ("k=11",), True,
          "PCI conv4 0.8798 > classic (CellProfiler) 0.6815 > autoencoder 0.4250"),
    Claim("PCI above autoencoder and classic features (pairwise distance)", LU_2019, "Fig 2B",
          "pci", ("autoencoder", "classic"), "pairwise_distance", "score_overall", (None,),
          False, "PCI conv3 -0.574 < autoencoder -0.281, classic -0.274"),
    Claim("classifier features above PCI (multi-scale AMI)", RAZDAIBIEDINA_2022, "Fig 1a, Sec 3.1",
          "locclf", ("pci",), "functional", "ami", ("go_cc", "go_bp", "kegg", "complexes"),
          True, "AMI ratio DeepLoc / PCI: 3.7 (GO CC), 2.6 (GO BP), 2.8 (KEGG), 4.1 (complexes)"),
    Claim("the ID task is cytoself's key ablation (clustering score)", KOBAYASHI_2021, "Table 1",
          "cytoself", ("cytoself_no_id",), "clustering_score", "gamma_median", (None,), True,
          "full 13.3 +- 2.4 vs without ID task 0.564 +- 0.14"),
)


def published_frame() -> pl.DataFrame:
    """:data:`PUBLISHED` as a table (one row per figure)."""
    schema = {"method": pl.Utf8, "evaluation": pl.Utf8, "metric": pl.Utf8,
              "k_or_param": pl.Utf8, "value": pl.Float64, "sd": pl.Float64, "paper": pl.Utf8,
              "source": pl.Utf8, "note": pl.Utf8}
    return pl.DataFrame([asdict(f) for f in PUBLISHED], schema=schema, orient="row")
