{{ config(tags=["clusters"]) }}

-- The 2×2 table of every (clustering, namespace, cluster, term) with at least one hit.
-- Background (GOrilla, "target vs background"): all proteins of the clustering that have
-- at least one annotation in the namespace. hits = k, cluster_size = n, term_size = K,
-- background_size = N.
with members as (
    select model_name, model_version, dataset, cut, protein, cluster_id
    from {{ ref('stg_protein_clusters') }}
),

annotated as (
    select members.*, terms.namespace, terms.go_id
    from members
    join {{ ref('gene_terms_propagated') }} as terms on terms.gene = members.protein
),

background as (
    select model_name, model_version, dataset, cut, namespace,
           count(distinct protein) as background_size
    from annotated
    group by all
),

term_size as (
    select model_name, model_version, dataset, cut, namespace, go_id,
           count(distinct protein) as term_size
    from annotated
    group by all
),

cluster_size as (
    select model_name, model_version, dataset, cut, namespace, cluster_id,
           count(distinct protein) as cluster_size
    from annotated
    group by all
),

hits as (
    select model_name, model_version, dataset, cut, namespace, cluster_id, go_id,
           count(distinct protein) as hits
    from annotated
    group by all
)

select
    hits.model_name, hits.model_version, hits.dataset, hits.cut, hits.namespace,
    hits.cluster_id, hits.go_id,
    hits.hits::bigint as hits,
    cluster_size.cluster_size::bigint as cluster_size,
    term_size.term_size::bigint as term_size,
    background.background_size::bigint as background_size
from hits
join cluster_size using (model_name, model_version, dataset, cut, namespace, cluster_id)
join term_size using (model_name, model_version, dataset, cut, namespace, go_id)
join background using (model_name, model_version, dataset, cut, namespace)
