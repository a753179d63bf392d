{{ config(tags=["clusters"]) }}

-- The terms each cluster is enriched in: fdr < var('enrichment_max_fdr') and
-- hits >= var('enrichment_min_hits'), with term names, ranked by FDR within the cluster.
select
    e.model_name, e.model_version, e.dataset, e.cut, e.namespace, e.cluster_id,
    row_number() over (
        partition by e.model_name, e.model_version, e.dataset, e.cut, e.namespace, e.cluster_id
        order by e.fdr, e.p_value, e.fold_enrichment desc, e.go_id
    ) as term_rank,
    e.go_id,
    t.term_name,
    e.hits, e.cluster_size, e.term_size, e.background_size,
    e.expected, e.fold_enrichment, e.p_value, e.fdr
from {{ ref('cluster_enrichment') }} as e
left join {{ ref('stg_go_terms') }} as t on t.go_id = e.go_id
where e.fdr < {{ var('enrichment_max_fdr') }}
  and e.hits >= {{ var('enrichment_min_hits') }}
order by e.model_name, e.model_version, e.dataset, e.cut, e.namespace, e.cluster_id, term_rank
