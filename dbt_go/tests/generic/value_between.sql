{#- Fails on every row whose column lies outside [min_value, max_value] (either bound
    optional, both inclusive) or is NaN. Nulls are left to not_null. -#}
{% test value_between(model, column_name, min_value=none, max_value=none) %}

select {{ column_name }} as offending_value
from {{ model }}
where {{ column_name }} is not null
  and (
    isnan({{ column_name }}::double)
    {%- if min_value is not none %}
    or {{ column_name }} < {{ min_value }}
    {%- endif %}
    {%- if max_value is not none %}
    or {{ column_name }} > {{ max_value }}
    {%- endif %}
  )

{% endtest %}
