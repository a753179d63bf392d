{#- A closure table must hold (t, t) for every term t of `terms_model`: fails once per
    term of `terms_model.terms_column` that lacks its self row. -#}
{% test reflexive_closure(model, terms_model, terms_column='go_id') %}

select t.{{ terms_column }} as term_without_self_row
from {{ terms_model }} as t
anti join {{ model }} as c
  on c.descendant = t.{{ terms_column }} and c.ancestor = t.{{ terms_column }}

{% endtest %}
