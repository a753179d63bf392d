"""Automation conditions of the feature assets and of everything downstream of them.

See :mod:`cellrep_assets.features.automation` for how the triggers fit together.
"""

import dagster as dg

from cellrep_assets.features.methods import BASELINES

AC = dg.AutomationCondition

#: Dataset-level assets downstream of the embeddings: eager, and not held back by
#: dataset × cell-line combinations a screen does not have (never materialized).
DOWNSTREAM = AC.eager().without(~AC.any_deps_missing()).with_label("eager_allow_missing")


def champion_key(method: str) -> dg.AssetKey:
    return dg.AssetKey(["champion", method])


def embeddings_key(method: str) -> dg.AssetKey:
    return dg.AssetKey(["cell_embeddings", method])


def embeddings_condition(method: str) -> dg.AutomationCondition:
    """Eager on new or updated crops; a champion update alone does not trigger it (the
    champion sensor re-embeds only partitions whose rows come from another version)."""
    if method in BASELINES:
        return AC.eager()
    updated = AC.any_deps_updated().ignore(dg.AssetSelection.assets(champion_key(method)))
    return ((AC.newly_missing() | updated).since_last_handled()
            & ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()
            ).with_label("eager_on_new_crops")
