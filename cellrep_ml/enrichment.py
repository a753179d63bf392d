"""GO enrichment of protein clusters: hypergeometric tail, Benjamini–Hochberg, reference.

The test is the one of GOrilla (Eden et al., *BMC Bioinformatics* 2009) in its "two
unranked lists" mode, as used for the protein clusters of paired cell inpainting
(Lu et al., *PLoS Comput. Biol.* 2019): for each cluster and GO term, the probability of
seeing at least ``k`` term members among the ``n`` cluster members when drawing without
replacement from a background of ``N`` proteins of which ``K`` carry the term; p-values
are corrected with the Benjamini–Hochberg false-discovery rate (Benjamini & Hochberg,
*J. R. Stat. Soc. B* 1995).

The dbt project ``dbt_go`` computes the same table in the warehouse; :func:`enrich` is the
pure-Python reference it is checked against, and :func:`hypergeom_sf` is the function its
Python model calls.

Definitions (per clustering = model_name, model_version, dataset, cut, and per namespace)
-----------------------------------------------------------------------------------------
N  background size: clustered proteins with at least one annotation in the namespace
K  term size: background proteins annotated to the term (annotations propagated up the DAG)
n  cluster size: cluster members in the background
k  hits: cluster members annotated to the term

Only (cluster, term) pairs with ``k >= 1`` are tested; one BH family is every tested pair
of a clustering and namespace (all clusters of a cut together).

>>> float(hypergeom_sf(2, 10, 4, 3))            # P(X >= 2), 4 successes in 10, 3 draws
0.3333333333333333
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy import stats

if TYPE_CHECKING:
    import duckdb

    from cellrep_ml.annotations import Reference

__all__ = [
    "CLUSTERING_KEY",
    "CLUSTERS_SCHEMA",
    "ENRICHMENT_COLUMNS",
    "REFERENCE_TABLES",
    "RECOVERY_COLUMNS",
    "benjamini_hochberg",
    "compartment_recovery",
    "enrich",
    "hypergeom_sf",
    "load_reference_tables",
]

#: Columns naming one clustering: a model, the dataset it embedded, and the cut of its tree.
CLUSTERING_KEY: tuple[str, ...] = ("model_name", "model_version", "dataset", "cut")

#: The warehouse table ``protein_clusters`` (dbt source), one row per protein and clustering.
CLUSTERS_SCHEMA = pl.Schema(
    {
        "model_name": pl.String,
        "model_version": pl.String,
        "dataset": pl.String,
        "cut": pl.String,  # the tree cut, e.g. "k=10" or "h=0.75"
        "protein": pl.String,  # gene symbol, as in the reference annotations
        "cluster_id": pl.Int64,
    }
)

#: Warehouse table name of each reference table read by ``dbt_go`` (its dbt sources).
REFERENCE_TABLES: dict[str, str] = {
    "go_terms": "ref_go_terms",
    "go_edges": "ref_go_edges",
    "gene_annotations": "ref_gene_annotations",
}

#: Columns of :func:`enrich`, identical to the dbt model ``cluster_enrichment``.
ENRICHMENT_COLUMNS: tuple[str, ...] = (
    *CLUSTERING_KEY,
    "namespace",
    "cluster_id",
    "go_id",
    "hits",  # k
    "cluster_size",  # n
    "term_size",  # K
    "background_size",  # N
    "expected",  # n K / N
    "fold_enrichment",  # (k / n) / (K / N)
    "p_value",  # P(X >= k)
    "fdr",  # Benjamini–Hochberg adjusted p-value
)


def hypergeom_sf(k, M, n, N) -> np.ndarray:
    """Upper tail of the hypergeometric distribution, ``P(X >= k)``, vectorised.

    ``X`` counts successes in ``N`` draws without replacement from a population of ``M``
    holding ``n`` successes (scipy's parameter names). The tail *includes* ``k``, so this
    is the enrichment p-value of ``k`` hits: ``scipy.stats.hypergeom.sf(k - 1, M, n, N)``.

    Parameters
    ----------
    k : int or (...) array_like of int
        Observed successes (``hits``); ``k <= 0`` gives 1, ``k > min(n, N)`` gives 0.
    M : int or (...) array_like of int
        Population size (``background_size``).
    n : int or (...) array_like of int
        Successes in the population (``term_size``), ``0 <= n <= M``.
    N : int or (...) array_like of int
        Draws (``cluster_size``), ``0 <= N <= M``.

    Returns
    -------
    p : (...) ndarray of float64
        The broadcast shape of the inputs, values in [0, 1].

    Raises
    ------
    ValueError
        A value is not an integer, or ``M``, ``n``, ``N`` are negative or ``n, N > M``.

    Examples
    --------
    >>> hypergeom_sf([0, 1, 2, 3, 4], 10, 4, 3).round(4).tolist()
    [1.0, 0.8333, 0.3333, 0.0333, 0.0]
    """
    arrays = [np.asarray(a) for a in (k, M, n, N)]
    for name, a in zip(("k", "M", "n", "N"), arrays, strict=True):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
                raise ValueError(f"hypergeom_sf: {name} must hold integers, got dtype {a.dtype}")
    k, M, n, N = (a.astype(np.int64) for a in np.broadcast_arrays(*arrays))
    if M.size:
        if (M < 0).any() or (n < 0).any() or (N < 0).any():
            raise ValueError("hypergeom_sf: M, n and N must be >= 0")
        bad = (n > M) | (N > M)
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(
                f"hypergeom_sf: successes n and draws N must not exceed the population M; "
                f"got M={M.ravel()[i]}, n={n.ravel()[i]}, N={N.ravel()[i]} at index {i}"
            )
    p = stats.hypergeom.sf(k - 1, M, n, N)
    # scipy returns nan for M == 0 (an empty population): nothing to test, P(X >= k<=0) = 1.
    p = np.where(k <= 0, 1.0, np.where(k > np.minimum(n, N), 0.0, p))
    return np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of one family of tests.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` for the p-values sorted ascending,
    ``m`` tests (Benjamini & Hochberg 1995, step-up procedure); rejecting ``q <= alpha``
    controls the false discovery rate at ``alpha``. Ties get equal q-values.

    Parameters
    ----------
    p : (m,) array_like of float
        p-values in [0, 1].

    Returns
    -------
    q : (m,) ndarray of float64
        In input order; ``q >= p``, monotone in ``p``, at most 1.

    Raises
    ------
    ValueError
        ``p`` is not one-dimensional, holds NaN, or a value lies outside [0, 1].
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"benjamini_hochberg: p must be 1-d, got shape {p.shape}")
    if np.isnan(p).any():
        raise ValueError(f"benjamini_hochberg: p holds {int(np.isnan(p).sum())} NaN values")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(
            f"benjamini_hochberg: p-values must lie in [0, 1], got min {p.min()}, max {p.max()}"
        )
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    # Same arithmetic as the SQL of dbt_go (p * m / rank, running minimum from the top),
    # so both give bit-identical values.
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def _check_columns(df: pl.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"enrich: {what} lacks columns {missing}; got {df.columns}")


def enrich(clusters: pl.DataFrame, annotations: pl.DataFrame) -> pl.DataFrame:
    """Hypergeometric GO enrichment of every cluster against all clustered proteins.

    The reference implementation of the dbt model ``cluster_enrichment``; see the module
    docstring for the definitions of k, n, K and N.

    Parameters
    ----------
    clusters : pl.DataFrame
        ``model_name, model_version, dataset, cut, protein, cluster_id`` (the
        ``protein_clusters`` table); a protein appears once per clustering.
    annotations : pl.DataFrame
        ``gene, go_id, namespace``, already *propagated* to every ancestor term
        (:meth:`cellrep_ml.annotations.Reference.propagated`); other columns and duplicate
        rows (several evidence codes) are ignored.

    Returns
    -------
    pl.DataFrame
        :data:`ENRICHMENT_COLUMNS`, one row per (clustering, namespace, cluster, term) with
        ``hits >= 1``, sorted by clustering, namespace, cluster, p-value and term.

    Raises
    ------
    ValueError
        A column is missing, or a protein has two clusters in one clustering.
    """
    _check_columns(clusters, (*CLUSTERING_KEY, "protein", "cluster_id"), "clusters")
    _check_columns(annotations, ("gene", "go_id", "namespace"), "annotations")
    key = list(CLUSTERING_KEY)
    members = clusters.select(*key, "protein", "cluster_id").unique()
    dup = members.group_by(*key, "protein").len().filter(pl.col("len") > 1)
    if dup.height:
        row = dup.row(0, named=True)
        raise ValueError(
            f"enrich: protein {row['protein']!r} has {row['len']} clusters in clustering "
            f"{[row[c] for c in key]}; expected one"
        )
    ann = annotations.select("gene", "go_id", "namespace").unique()
    hits = members.join(ann, left_on="protein", right_on="gene", how="inner")
    family = [*key, "namespace"]
    background = hits.group_by(family).agg(background_size=pl.col("protein").n_unique())
    term_size = hits.group_by(*family, "go_id").agg(term_size=pl.col("protein").n_unique())
    cluster_size = hits.group_by(*family, "cluster_id").agg(
        cluster_size=pl.col("protein").n_unique()
    )
    counts = (
        hits.group_by(*family, "cluster_id", "go_id")
        .agg(hits=pl.col("protein").n_unique())
        .join(cluster_size, on=[*family, "cluster_id"])
        .join(term_size, on=[*family, "go_id"])
        .join(background, on=family)
        .with_columns(pl.col("hits", "cluster_size", "term_size", "background_size").cast(pl.Int64))
    )
    p = hypergeom_sf(
        counts["hits"].to_numpy(),
        counts["background_size"].to_numpy(),
        counts["term_size"].to_numpy(),
        counts["cluster_size"].to_numpy(),
    )
    counts = counts.with_columns(p_value=pl.Series(p, dtype=pl.Float64)).with_row_index("_row")
    fdr = np.empty(counts.height)
    for part in counts.partition_by(family, maintain_order=False):
        fdr[part["_row"].to_numpy()] = benjamini_hochberg(part["p_value"].to_numpy())
    counts = counts.with_columns(fdr=pl.Series(fdr, dtype=pl.Float64))
    out = counts.with_columns(
        expected=pl.col("cluster_size").cast(pl.Float64)
        * pl.col("term_size")
        / pl.col("background_size"),
        fold_enrichment=(pl.col("hits").cast(pl.Float64) / pl.col("cluster_size"))
        / (pl.col("term_size").cast(pl.Float64) / pl.col("background_size")),
    )
    return out.select(ENRICHMENT_COLUMNS).sort(*family, "cluster_id", "p_value", "go_id")


def load_reference_tables(
    con: duckdb.DuckDBPyConnection, reference: Reference | str | Path | None = None
) -> dict[str, int]:
    """Write the GO tables of a reference into a DuckDB warehouse as the sources of ``dbt_go``.

    Creates or replaces ``ref_go_terms (go_id, name, namespace)``,
    ``ref_go_edges (child, parent, relation)`` and
    ``ref_gene_annotations (gene, go_id, namespace, evidence)`` (direct annotations) in
    one transaction, so dbt never sees a mix of two references.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        A read-write connection to the warehouse.
    reference : Reference or path, optional
        A loaded :class:`~cellrep_ml.annotations.Reference`, a reference directory, or
        ``None`` for :func:`~cellrep_ml.annotations.load_reference`'s default.

    Returns
    -------
    dict
        Warehouse table name → rows written.
    """
    from cellrep_ml.annotations import Reference, load_reference

    if not isinstance(reference, Reference):
        reference = load_reference(reference)
    written = {}
    con.begin()
    try:
        for table, name in REFERENCE_TABLES.items():
            con.register("_cellrep_reference_frame", getattr(reference, table).to_arrow())
            try:
                con.execute(
                    f'create or replace table "{name}" as select * from _cellrep_reference_frame'
                )
            finally:
                con.unregister("_cellrep_reference_frame")
            written[name] = con.execute(f'select count(*) from "{name}"').fetchall()[0][0]
        con.commit()
    except Exception:
        con.rollback()
        raise
    return written


#: Columns of :func:`compartment_recovery`.
RECOVERY_COLUMNS: tuple[str, ...] = (
    *CLUSTERING_KEY,
    "compartment",
    "n_proteins",  # proteins of the compartment in the clustering
    "cluster_id",  # the cluster holding most of them
    "n_in_cluster",
    "cluster_size",
    "go_id",  # the compartment's GO term found enriched in that cluster (null if none)
    "term_rank",  # its rank among the cluster's enriched CC terms (1 = lowest FDR)
    "fdr",
    "recovered",
)


def compartment_recovery(
    clusters: pl.DataFrame,
    enriched: pl.DataFrame,
    truth: pl.DataFrame,
    compartment_terms: dict[str, tuple[str, ...]],
    *,
    min_proteins: int = 3,
) -> pl.DataFrame:
    """Whether GO enrichment of each clustering recovers the compartments proteins came from.

    For a simulated screen, each protein's primary compartment (the pattern it was rendered
    from, written by the simulator as ground truth) is compared with the clusters: a
    compartment is *recovered* by a clustering when a cluster holding the most of its
    proteins is enriched (a row of ``enriched_terms``, namespace CC) in one of the
    compartment's GO terms. The simulator derives compartments from the same GO CC
    annotations (:data:`cellrep_ml.simulate.PATTERN_GO`), so good features must recover
    every compartment with enough proteins; random features recover none.

    Parameters
    ----------
    clusters : pl.DataFrame
        ``protein_clusters`` rows (:data:`CLUSTERS_SCHEMA`).
    enriched : pl.DataFrame
        ``enriched_terms`` rows: :data:`CLUSTERING_KEY`, ``namespace, cluster_id, go_id,
        term_rank, fdr``.
    truth : pl.DataFrame
        ``protein, compartment``: the primary compartment of each simulated protein.
    compartment_terms : dict
        Compartment → its GO CC ids (:data:`cellrep_ml.simulate.PATTERN_GO`).
    min_proteins : int
        Compartments with fewer clustered proteins are left out (too few to be enriched).

    Returns
    -------
    pl.DataFrame
        :data:`RECOVERY_COLUMNS`, one row per clustering and compartment.

    Raises
    ------
    ValueError
        A column is missing, or ``truth`` names a compartment absent from ``compartment_terms``.
    """
    _check_columns(clusters, (*CLUSTERING_KEY, "protein", "cluster_id"), "clusters")
    _check_columns(enriched, (*CLUSTERING_KEY, "namespace", "cluster_id", "go_id", "term_rank",
                              "fdr"), "enriched")
    _check_columns(truth, ("protein", "compartment"), "truth")
    unknown = sorted(set(truth["compartment"].drop_nulls()) - set(compartment_terms))
    if unknown:
        raise ValueError(f"compartment_recovery: compartments {unknown} have no GO terms; "
                         f"known: {sorted(compartment_terms)}")
    key = list(CLUSTERING_KEY)
    terms = pl.DataFrame(
        [(c, t) for c, ids in compartment_terms.items() for t in ids],
        schema={"compartment": pl.String, "go_id": pl.String}, orient="row",
    )
    members = clusters.select(*key, "protein", "cluster_id").join(
        truth.select("protein", "compartment").drop_nulls(), on="protein")
    sizes = clusters.group_by(*key, "cluster_id").agg(cluster_size=pl.len())
    per = members.group_by(*key, "compartment").agg(n_proteins=pl.col("protein").n_unique())
    per = per.filter(pl.col("n_proteins") >= min_proteins)
    counts = members.group_by(*key, "compartment", "cluster_id").agg(n_in_cluster=pl.len())
    top = counts.join(per, on=[*key, "compartment"]).filter(
        pl.col("n_in_cluster") == pl.col("n_in_cluster").max().over(*key, "compartment"))
    cc = (enriched.filter(pl.col("namespace") == "CC")
          .select(*key, "cluster_id", "go_id", "term_rank", "fdr")
          .join(terms, on="go_id"))
    hits = (top.join(cc, on=[*key, "cluster_id", "compartment"], how="left")
            .join(sizes, on=[*key, "cluster_id"], how="left")
            # among tied majority clusters and several terms, the best-ranked hit
            .sort("term_rank", nulls_last=True)
            .group_by(*key, "compartment", maintain_order=True).first())
    out = hits.with_columns(recovered=pl.col("go_id").is_not_null())
    return out.select(
        *[pl.col(c).cast(pl.String) for c in key], "compartment",
        *[pl.col(c).cast(pl.Int64) for c in ("n_proteins", "cluster_id", "n_in_cluster",
                                             "cluster_size")],
        "go_id", pl.col("term_rank").cast(pl.Int64), pl.col("fdr").cast(pl.Float64),
        "recovered",
    ).sort(*key, "compartment")
