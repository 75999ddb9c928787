{#-
    Building a table in buckets: the same query once per bucket of keys (hash(key) % buckets), so the
    per-key state of a big day (lists, hash tables, aggregates) is a fraction of the whole. For a table
    whose rows depend on one key's own input only (a user's events; an item's co-visits) plus global
    lookups such as the item pool, the union of the buckets is exactly the single-query result; the
    bucket count changes cost, never content.

    Usage in a model: the body is `{{ query_macro(0, user_buckets(...)) }}` and a post-hook
    `{{ insert_user_buckets(query_macro, ...) }}` (or `insert_buckets(query_macro, n)`) appends buckets
    1 .. n-1 inside the model's transaction (after dbt's delete+insert or create of bucket 0, so a rerun
    still replaces the whole ds).
-#}

{#-
    How many buckets `count_sql` (a query returning one count) asks for: one per `per_bucket_var` of that
    count, at least one; 0 in the var means one bucket. Looked up when the model runs (the same answer in
    the body and in the post-hook: nothing writes the counted table in between); at parse time 1.
-#}
{% macro buckets_for(count_sql, per_bucket_var) -%}
    {%- set per_bucket = int_var(per_bucket_var) | int -%}
    {%- set buckets = 1 -%}
    {%- if execute and per_bucket > 0 -%}
        {%- set found = run_query(count_sql) -%}
        {%- set rows = found.columns[0].values()[0] | int -%}
        {%- set buckets = [1, (rows + per_bucket - 1) // per_bucket] | max -%}
    {%- endif -%}
    {{ return(buckets) }}
{%- endmacro %}

{#- User buckets: one per `per_bucket_var` events of ds in int_events_sessionized. -#}
{% macro user_buckets(per_bucket_var) -%}
    {{ return(buckets_for("select count(*) from " ~ ref('int_events_sessionized') ~ " where ds = " ~ ds(),
                          per_bucket_var)) }}
{%- endmacro %}

{#- A filter keeping the keys of one bucket (`and ...`), nothing when there is one bucket. -#}
{% macro bucket_filter(column, bucket, buckets) -%}
    {%- if buckets > 1 %} and hash({{ column }}) % {{ buckets }} = {{ bucket }}{% endif -%}
{%- endmacro %}

{#- Post-hook: insert buckets 1 .. n-1 of `query_macro(bucket, buckets)` into the model's table. -#}
{% macro insert_buckets(query_macro, buckets) -%}
    {%- if execute -%}
        {%- for bucket in range(1, buckets) -%}
            {%- call statement('bucket_' ~ bucket) -%}
                insert into {{ this }} by name
                select * from (
                    {{ query_macro(bucket, buckets) }}
                )
            {%- endcall -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{#- Post-hook: the same, for user buckets sized by `per_bucket_var` events of ds. -#}
{% macro insert_user_buckets(query_macro, per_bucket_var) -%}
    {{- insert_buckets(query_macro, user_buckets(per_bucket_var)) -}}
{%- endmacro %}
