{#- Fails with one row per value of `column_name` below zero (nulls pass). -#}
{% test non_negative(model, column_name) %}

select {{ column_name }} from {{ model }}
where {{ column_name }} < 0

{% endtest %}
