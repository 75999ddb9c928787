{#-
    dbt's `where` test config, with `__ds__` replaced by the run's ds literal (macros/vars.sql) and
    `__rebuilt_days__` by a condition on the days the run of ds rebuilt in the tested model
    (macros/rebuilt_days.sql).

    dbt renders a test's config when it parses the project, but ds is only known at run time: it is not
    a var at parse time (recsys/transform.py parses with every var but ds, so that one parse serves every
    date and partial parsing survives a new ds). This override of dbt's macro is the documented way to
    put run-time values into `where`; it is called when the test compiles, where `ds()` is the run's.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if not where -%}
        {%- do return(relation) -%}
    {%- endif -%}
    {%- set where = where | replace('__ds__', ds()) if '__ds__' in where else where -%}
    {%- set where = where | replace('__rebuilt_days__', rebuilt_days_filter(relation)) if '__rebuilt_days__' in where else where -%}
    {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
{%- endmacro %}
