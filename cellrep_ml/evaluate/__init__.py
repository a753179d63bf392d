"""Evaluations of the seed papers as functions: arrays and polars frames in, numbers and frames out.

- Lu et al. 2019: :func:`knn_balanced_accuracy`, :func:`pairwise_distance_scores`,
  :func:`cell_line_distance_scores`, :func:`multilocalization_scores`,
  :func:`variability_ranking`.
- Kobayashi et al. 2021: :func:`clustering_score`, :func:`clustering_score_repeats`,
  :func:`umap_embedding`, :func:`feature_spectrum`, :func:`compartment_spectra`.
- Razdaibiedina & Brechalov 2022: :func:`functional_scores`.
- PNG figures: :mod:`cellrep_ml.evaluate.plots`.
- Running them: :mod:`~cellrep_ml.evaluate.labels` (what each evaluation scores against),
  :mod:`~cellrep_ml.evaluate.suite` (every applicable evaluation of one method, as result
  rows), :mod:`~cellrep_ml.evaluate.model_features` (layers the warehouse does not hold),
  :mod:`~cellrep_ml.evaluate.published` (the papers' figures and claimed rankings),
  :mod:`~cellrep_ml.evaluate.leaderboard` (every method × result, claims checked).
"""

from cellrep_ml.evaluate.clustering_score import clustering_score, clustering_score_repeats
from cellrep_ml.evaluate.embedding import umap_embedding
from cellrep_ml.evaluate.feature_spectrum import (
    FeatureSpectrum,
    code_histograms,
    compartment_spectra,
    feature_spectrum,
)
from cellrep_ml.evaluate.functional import (
    FunctionalStandard,
    align_standard,
    functional_pairs,
    functional_scores,
    max_f_beta,
    per_query_average_precision,
)
from cellrep_ml.evaluate.knn import knn_balanced_accuracy, leave_one_out_neighbors
from cellrep_ml.evaluate.labels import Localizations, functional_standards, screen_localizations
from cellrep_ml.evaluate.leaderboard import check_claims, leaderboard_table
from cellrep_ml.evaluate.multilocalization import multilocalization_scores, variability_ranking
from cellrep_ml.evaluate.pairwise_distance import (
    ImageDistances,
    PairwiseDistanceResult,
    cell_line_distance_scores,
    pairwise_distance_scores,
    single_term_proteins,
)
from cellrep_ml.evaluate.published import CLAIMS, PUBLISHED

__all__ = [
    "CLAIMS",
    "FeatureSpectrum",
    "FunctionalStandard",
    "ImageDistances",
    "Localizations",
    "PUBLISHED",
    "PairwiseDistanceResult",
    "align_standard",
    "cell_line_distance_scores",
    "check_claims",
    "clustering_score",
    "clustering_score_repeats",
    "code_histograms",
    "compartment_spectra",
    "feature_spectrum",
    "functional_pairs",
    "functional_scores",
    "functional_standards",
    "knn_balanced_accuracy",
    "leaderboard_table",
    "leave_one_out_neighbors",
    "max_f_beta",
    "multilocalization_scores",
    "pairwise_distance_scores",
    "per_query_average_precision",
    "screen_localizations",
    "single_term_proteins",
    "umap_embedding",
    "variability_ranking",
]
