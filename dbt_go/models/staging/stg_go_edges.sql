{{ config(tags=["reference"]) }}

select distinct
    child::varchar as child,
    parent::varchar as parent,
    relation::varchar as relation
from {{ source('cellrep', 'ref_go_edges') }}
