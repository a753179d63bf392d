"""Clusters and GO enrichment: reference_tables, protein_clusters, the dbt_go models and checks.

``enrichment_assets`` holds every asset and asset check of the domain; the dbt models need
the resource ``dbt`` (:func:`dbt_resource`) beside ``home``.
"""

from cellrep_assets.enrichment.assets import protein_clusters, reference_tables
from cellrep_assets.enrichment.checks import recovers_simulated_compartments
from cellrep_assets.enrichment.dbt import dbt_go_assets, dbt_project, dbt_resource

enrichment_assets = [reference_tables, protein_clusters, dbt_go_assets,
                     recovers_simulated_compartments]

__all__ = [
    "dbt_go_assets",
    "dbt_project",
    "dbt_resource",
    "enrichment_assets",
    "protein_clusters",
    "recovers_simulated_compartments",
    "reference_tables",
]
