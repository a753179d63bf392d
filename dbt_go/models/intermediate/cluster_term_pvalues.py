"""Hypergeometric upper-tail p-value P(X >= hits) of every row of cluster_term_counts.

A dbt Python model: dbt-duckdb runs it in the dbt process on the build's own DuckDB
connection, so it needs the `cellrep` package importable by the Python that runs dbt
(the project's virtual environment). The same function is the test-suite's reference.
"""

import polars as pl

from cellrep_ml.enrichment import hypergeom_sf


def model(dbt, session):
    dbt.config(materialized="table", tags=["clusters"])
    counts = dbt.ref("cluster_term_counts").pl()
    p = hypergeom_sf(
        counts["hits"].to_numpy(),
        counts["background_size"].to_numpy(),
        counts["term_size"].to_numpy(),
        counts["cluster_size"].to_numpy(),
    )
    return counts.with_columns(p_value=pl.Series("p_value", p, dtype=pl.Float64)).to_arrow()
