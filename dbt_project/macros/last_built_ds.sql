{#-
    The last ds of `relation` built before the run's ds, looked up when the model runs, as 'YYYY-MM-DD';
    none when there is none (and at parse time). Written into the SQL as a literal, it prunes the scans
    of a table by its zone maps on ds, where a subquery would filter every row.
-#}
{% macro last_built_ds(relation, where='true') -%}
    {%- if not execute -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set found = run_query("select max(ds) from " ~ relation ~ " where ds < " ~ ds() ~ " and (" ~ where ~ ")") -%}
    {%- set value = found.columns[0].values()[0] -%}
    {{ return(none if value is none else value | string) }}
{%- endmacro %}
