{{ config(tags=["reference"]) }}

-- One row per (gene, term): a gene annotated to a term under several evidence codes
-- counts once in the enrichment.
select
    gene::varchar as gene,
    go_id::varchar as go_id,
    any_value(namespace)::varchar as namespace,
    list(distinct evidence::varchar order by evidence::varchar) as evidence_codes
from {{ source('cellrep', 'ref_gene_annotations') }}
group by gene, go_id
