"""Annotation propagation over the GO DAG (the "true path rule").

A gene annotated to a term is also annotated to every ancestor of that term along
``is_a`` and ``part_of`` edges (Gene Ontology Consortium, *Nucleic Acids Res.* 2004).

All functions share one traversal, :func:`_distances`: each term's ancestor set is the
union of its parents' sets, computed once per term in depth-first post-order and memoized,
so the full GO (~45k terms, ~90k edges) closes in a few seconds instead of one BFS per
(gene, term) pair.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from cellrep_ml.annotations.schema import RELATIONS, validate
from cellrep_ml.errors import ReferenceDataError

__all__ = ["PROPAGATED", "ancestors", "propagate", "term_closure"]

#: Evidence code given to rows added by :func:`propagate`.
PROPAGATED = "propagated"


def _parent_map(edges: pl.DataFrame, relations: Iterable[str]) -> dict[str, list[str]]:
    relations = list(relations)
    unknown = sorted(set(relations) - set(RELATIONS))
    if unknown:
        raise ValueError(f"relations must be among {list(RELATIONS)}, got {unknown}")
    kept = edges.filter(pl.col("relation").is_in(relations)).select("child", "parent").unique()
    parents: dict[str, list[str]] = {}
    for child, parent in kept.iter_rows():
        parents.setdefault(child, []).append(parent)
    return parents


def _distances(
    terms: Iterable[str], parents: dict[str, list[str]], memo: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Fill ``memo[t]`` = {ancestor: shortest distance} (self at 0) for ``terms`` and their ancestors.

    Iterative post-order DFS: a term is finished once all its parents are, so no Python
    recursion limit is hit on deep chains. A term met again while on the current path
    means the graph has a cycle, which GO must not have.
    """
    on_stack: set[str] = set()
    for start in terms:
        if start in memo:
            continue
        stack = [start]
        on_stack.add(start)
        while stack:
            term = stack[-1]
            # Descend into one unfinished parent at a time, so the stack is always a
            # path from `start` upwards and `on_stack` marks exactly that path.
            pending = next((p for p in parents.get(term, ()) if p not in memo), None)
            if pending is not None:
                if pending in on_stack:
                    raise ReferenceDataError(
                        f"GO edges contain a cycle through {pending} and {term}"
                    )
                stack.append(pending)
                on_stack.add(pending)
                continue
            stack.pop()
            on_stack.discard(term)
            dist = {term: 0}
            for p in parents.get(term, ()):
                for anc, d in memo[p].items():
                    if d + 1 < dist.get(anc, 1 << 30):
                        dist[anc] = d + 1
            memo[term] = dist
    return memo


def ancestors(go_id: str, edges: pl.DataFrame, relations: Iterable[str] = RELATIONS) -> set[str]:
    """Every ancestor of ``go_id`` along ``relations``, excluding ``go_id`` itself.

    Parameters
    ----------
    go_id : str
        A GO id, e.g. ``'GO:0005783'``. A term absent from ``edges`` has no ancestors.
    edges : pl.DataFrame
        ``go_edges`` table (``child, parent, relation``).
    relations : iterable of str
        Relations to follow, among ``('is_a', 'part_of')``.
    """
    memo = _distances([go_id], _parent_map(edges, relations), {})
    return set(memo[go_id]) - {go_id}


def term_closure(
    edges: pl.DataFrame,
    relations: Iterable[str] = RELATIONS,
    terms: Iterable[str] | None = None,
) -> pl.DataFrame:
    """The reflexive-transitive closure of the GO DAG as a table.

    Parameters
    ----------
    edges : pl.DataFrame
        ``go_edges`` table.
    relations : iterable of str
        Relations to follow.
    terms : iterable of str, optional
        Descendants to close over; default every term named in ``edges``.

    Returns
    -------
    pl.DataFrame
        ``descendant, ancestor, distance`` — one row per (term, ancestor) with the
        shortest number of edges between them; every term is its own ancestor at 0.
    """
    parents = _parent_map(edges, relations)
    if terms is None:
        terms = pl.concat([edges["child"], edges["parent"]]).unique().sort().to_list()
    terms = list(dict.fromkeys(terms))
    memo = _distances(terms, parents, {})
    desc, anc, dist = [], [], []
    for term in terms:
        for a, d in memo[term].items():
            desc.append(term)
            anc.append(a)
            dist.append(d)
    return pl.DataFrame(
        {"descendant": desc, "ancestor": anc, "distance": dist},
        schema={"descendant": pl.String, "ancestor": pl.String, "distance": pl.Int32},
    )


def propagate(
    annotations: pl.DataFrame,
    edges: pl.DataFrame,
    relations: Iterable[str] = RELATIONS,
) -> pl.DataFrame:
    """Add every ancestor term to each gene's direct annotations.

    Parameters
    ----------
    annotations : pl.DataFrame
        ``gene_annotations`` table (``gene, go_id, namespace, evidence``) of direct annotations.
    edges : pl.DataFrame
        ``go_edges`` table.
    relations : iterable of str
        Relations to propagate over; ``("is_a",)`` ignores ``part_of`` edges.

    Returns
    -------
    pl.DataFrame
        Same columns. Direct rows are kept unchanged (with their evidence codes); each
        (gene, ancestor) pair reached only through the DAG is added once with evidence
        ``'propagated'`` and the namespace of the direct annotation (``is_a`` and
        ``part_of`` edges of GO stay within one namespace). No duplicate rows.
    """
    annotations = validate(annotations, "gene_annotations", "annotations")
    direct_terms = annotations["go_id"].unique().to_list()
    memo = _distances(direct_terms, _parent_map(edges, relations), {})
    pairs = [(t, a) for t in direct_terms for a in memo[t] if a != t]
    lift = pl.DataFrame(pairs, schema={"go_id": pl.String, "ancestor": pl.String}, orient="row")
    added = (
        annotations.select("gene", "go_id", "namespace")
        .unique()
        .join(lift, on="go_id", how="inner")
        .select("gene", pl.col("ancestor").alias("go_id"), "namespace")
        .unique(subset=["gene", "go_id"], keep="first")
        .join(annotations.select("gene", "go_id").unique(), on=["gene", "go_id"], how="anti")
        .with_columns(evidence=pl.lit(PROPAGATED))
    )
    out = pl.concat([annotations.unique(maintain_order=True), added.select(annotations.columns)])
    return out.sort("gene", "go_id", "evidence")
