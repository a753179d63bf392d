{{ config(tags=["reference"]) }}

select
    go_id::varchar as go_id,
    name::varchar as term_name,
    namespace::varchar as namespace
from {{ source('cellrep', 'ref_go_terms') }}
