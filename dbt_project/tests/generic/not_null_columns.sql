{#-
    dbt's not_null for several columns of one model in ONE test and one scan: fails with a row per column
    that holds nulls (column_name, null_rows); the failure message shows those rows (recsys/transform.py).

    Why not one not_null per column: each test is a dbt node, and dbt's own work per node (compiling,
    the materialization macros, run results) cost more than the query on a small day. With 52 per-column
    tests a tiny build spent 8.5 s of CPU, 6.6 s without them (bench/README.md, session 15); at 1M
    events/day each of them also scanned its table again.
-#}
{% test not_null_columns(model, columns) %}

with null_counts as (

    select
    {%- for column in columns %}
        count(*) filter (where {{ adapter.quote(column) }} is null) as {{ adapter.quote(column) }}{{ ',' if not loop.last }}
    {%- endfor %}
    from {{ model }}

)

select column_name, null_rows
from (unpivot null_counts on columns(*) into name column_name value null_rows)
where null_rows > 0

{% endtest %}
