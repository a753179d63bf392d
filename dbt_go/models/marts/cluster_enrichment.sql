{{ config(tags=["clusters"]) }}

-- Benjamini–Hochberg FDR per family = (clustering, namespace): every tested
-- (cluster, term) pair of one cut of one model on one dataset, in one GO namespace.
-- q_(i) = min over j >= i of m p_(j) / j, capped at 1; the running minimum from the
-- largest p-value down gives tied p-values the same q whatever their order.
with tested as (
    select *,
        count(*) over family as n_tests,
        row_number() over (family order by p_value, cluster_id, go_id) as p_rank
    from {{ ref('cluster_term_pvalues') }}
    window family as (partition by model_name, model_version, dataset, cut, namespace)
),

adjusted as (
    select *,
        min(p_value * n_tests / p_rank) over (
            partition by model_name, model_version, dataset, cut, namespace
            order by p_rank desc
            rows between unbounded preceding and current row
        ) as bh_step_up
    from tested
)

select
    model_name, model_version, dataset, cut, namespace, cluster_id, go_id,
    hits, cluster_size, term_size, background_size,
    cluster_size::double * term_size / background_size as expected,
    (hits::double / cluster_size) / (term_size::double / background_size) as fold_enrichment,
    p_value,
    least(bh_step_up, 1.0) as fdr,
    n_tests
from adjusted
order by model_name, model_version, dataset, cut, namespace, cluster_id, p_value, go_id
