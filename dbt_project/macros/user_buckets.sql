{#-
    Building a mart in user buckets: the same query once per bucket of users (hash(user_id) % buckets),
    so the per-user state of a big day (lists, hash tables) is a fraction of the whole. For a mart whose
    rows depend on the user's own events only (plus global lookups such as the item pool), the union of
    the buckets is exactly the single-query result; the bucket count changes cost, never content.

    Usage in a model: the body is `{{ query_macro(0, user_buckets(...)) }}` and a post-hook
    `{{ insert_user_buckets(query_macro, ...) }}` appends buckets 1 .. n-1 inside the model's transaction
    (after dbt's delete+insert of bucket 0, so a rerun still replaces the whole ds).
-#}

{#-
    How many buckets ds needs: one per `per_bucket_var` events of ds in int_events_sessionized (at least
    one). Looked up when the model runs (the same answer in the body and in the post-hook: nothing writes
    that table in between); at parse time 1.
-#}
{% macro user_buckets(per_bucket_var) -%}
    {%- set per_bucket = int_var(per_bucket_var) | int -%}
    {%- set buckets = 1 -%}
    {%- if execute and per_bucket > 0 -%}
        {%- set found = run_query("select count(*) from " ~ ref('int_events_sessionized') ~ " where ds = " ~ ds()) -%}
        {%- set events = found.columns[0].values()[0] | int -%}
        {%- set buckets = [1, (events + per_bucket - 1) // per_bucket] | max -%}
    {%- endif -%}
    {{ return(buckets) }}
{%- endmacro %}

{#- A filter keeping the users of one bucket (`and ...`), nothing when there is one bucket. -#}
{% macro user_bucket_filter(column, bucket, buckets) -%}
    {%- if buckets > 1 %} and hash({{ column }}) % {{ buckets }} = {{ bucket }}{% endif -%}
{%- endmacro %}

{#- Post-hook: insert buckets 1 .. n-1 of `query_macro(bucket, buckets)` into the model's table. -#}
{% macro insert_user_buckets(query_macro, per_bucket_var) -%}
    {%- if execute -%}
        {%- set buckets = user_buckets(per_bucket_var) -%}
        {%- for bucket in range(1, buckets) -%}
            {%- call statement('user_bucket_' ~ bucket) -%}
                insert into {{ this }} by name
                select * from (
                    {{ query_macro(bucket, buckets) }}
                )
            {%- endcall -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
