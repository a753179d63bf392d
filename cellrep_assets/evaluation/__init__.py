"""Evaluation domain: evaluation/<method> per feature method and the leaderboard."""

from cellrep_assets.evaluation.assets import (
    DETAIL_TABLES,
    FEATURE_METHODS,
    EvaluationConfig,
    build_evaluation_asset,
    evaluation_assets,
    evaluation_assets_by_method,
    leaderboard,
)

__all__ = [
    "DETAIL_TABLES",
    "FEATURE_METHODS",
    "EvaluationConfig",
    "build_evaluation_asset",
    "evaluation_assets",
    "evaluation_assets_by_method",
    "leaderboard",
]
