{{ config(tags=["reference"]) }}

-- Reflexive-transitive closure of the GO DAG over is_a and part_of (both transitive, so
-- an annotation to a term holds for all its ancestors: the "true path rule").
-- `union` (not `union all`) drops pairs found before, so each step only extends new pairs
-- and the recursion stops once no new (descendant, ancestor) pair appears.
with recursive

edges as (
    select child, parent
    from {{ ref('stg_go_edges') }}
    where relation in ('is_a', 'part_of')
),

terms as (
    select go_id as term from {{ ref('stg_go_terms') }}
    union
    select child from edges
    union
    select parent from edges
),

closure (descendant, ancestor) as (
    select term, term from terms
    union
    select closure.descendant, edges.parent
    from closure
    join edges on edges.child = closure.ancestor
)

select descendant, ancestor
from closure
order by descendant, ancestor
