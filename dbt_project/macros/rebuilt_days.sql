{#-
    Which days a run of an incremental model wrote, so its data tests read those days and not the whole
    history (which grows every night).

    int_events_sessionized rebuilds the days after the last one it had built before the run: normally just
    ds, several days when it catches up a skipped day, every day on its first build or with --full-refresh.
    Its pre-hook `record_rebuilt_days()` writes that run's answer into `<model>_builds` (ds, rebuilt_after:
    the last day kept, null when every day was rebuilt), inside the model's transaction, so a failed build
    records nothing. A test's `where: "__rebuilt_days__"` (macros/get_where_subquery.sql) becomes
    `rebuilt_days_filter(relation)`: the days rebuilt_after .. ds, i.e. the days the run wrote and the last
    day it kept. That day is read too because it is the only one a rewritten day can collide with: an
    event's ts fixes its ds, and only a change of ingest.day_timezone (at most a day's shift) could land
    the same event in two neighbouring days. (A new (user_id, event_number) cannot repeat an earlier
    day's either: assert_events_numbered_in_time_order checks that ds continues each user's numbering.)

    Why a record and not a lookup after the fact: once the model has run, the table no longer tells which
    of its days before ds this run wrote.
-#}

{#- The table holding one row per ds: the last day that ds's run kept (null: it rebuilt every day). -#}
{% macro rebuilt_days_log(relation) -%}
    {{ return(api.Relation.create(database=relation.database, schema=relation.schema,
                                  identifier=relation.identifier ~ '_builds')) }}
{%- endmacro %}

{#- Pre-hook, before the model deletes or writes anything: the last day before ds is the last day kept
    (as macros/last_built_ds.sql finds it for the model's body); a non-incremental build keeps none. -#}
{% macro record_rebuilt_days() -%}
    {%- set log_table = rebuilt_days_log(this) -%}
    create table if not exists {{ log_table }} (ds date primary key, rebuilt_after date);
    insert or replace into {{ log_table }}
    select {{ ds() }},
        {% if is_incremental() %}(select max(ds) from {{ this }} where ds < {{ ds() }}){% else %}null{% endif %}
{%- endmacro %}

{#-
    SQL condition on ds: the days the run of ds rebuilt in `relation` and the last day it kept. Without a
    record for ds (the model was not built for ds, or a warehouse from before the records) it is ds alone.
-#}
{% macro rebuilt_days_filter(relation) -%}
    {%- set only_ds = '(ds = ' ~ ds() ~ ')' -%}
    {%- if not execute -%}
        {{ return(only_ds) }}
    {%- endif -%}
    {%- set log_table = rebuilt_days_log(relation) -%}
    {#- the catalog, not adapter.get_relation: dbt's relation cache predates the pre-hook that created the
        table on the run that wrote the first record -#}
    {%- set exists = run_query("select count(*) from information_schema.tables where table_catalog = '"
                               ~ log_table.database ~ "' and table_schema = '" ~ log_table.schema
                               ~ "' and table_name = '" ~ log_table.identifier ~ "'") -%}
    {%- if exists.rows[0][0] == 0 -%}
        {{ return(only_ds) }}
    {%- endif -%}
    {%- set found = run_query("select count(*), max(rebuilt_after) from " ~ log_table ~ " where ds = " ~ ds()) -%}
    {%- set row = found.rows[0] -%}
    {%- if row[0] == 0 -%}
        {{ return(only_ds) }}
    {%- elif row[1] is none -%}
        {{ return('(ds <= ' ~ ds() ~ ')') }}
    {%- endif -%}
    {{ return("(ds >= date '" ~ row[1] ~ "' and ds <= " ~ ds() ~ ")") }}
{%- endmacro %}
