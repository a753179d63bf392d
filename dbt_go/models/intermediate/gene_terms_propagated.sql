{{ config(tags=["reference"]) }}

-- Direct annotations propagated to every ancestor term; the namespace is that of the
-- direct annotation (is_a and part_of edges of GO stay within one namespace).
-- A term absent from the DAG keeps its direct annotation.
with direct as (
    select gene, go_id, namespace from {{ ref('stg_gene_annotations') }}
),

lifted as (
    select direct.gene, coalesce(closure.ancestor, direct.go_id) as go_id, direct.namespace,
           closure.ancestor is null or closure.ancestor = direct.go_id as is_direct
    from direct
    left join {{ ref('go_term_closure') }} as closure
      on closure.descendant = direct.go_id
)

select gene, go_id, any_value(namespace) as namespace, bool_or(is_direct) as is_direct
from lifted
group by gene, go_id
order by gene, go_id
