{{ config(tags=["clusters"]) }}

select distinct
    model_name::varchar as model_name,
    model_version::varchar as model_version,
    dataset::varchar as dataset,
    cut::varchar as cut,
    protein::varchar as protein,
    cluster_id
from {{ source('cellrep', 'protein_clusters') }}
