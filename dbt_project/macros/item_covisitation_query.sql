{#-
    The query of intermediate.int_item_covisitation for one bucket of items (macros/user_buckets.sql):
    the pairs (item, neighbour) are counted only for the items of the bucket, against every session.
-#}
{% macro item_covisitation_query(bucket, buckets) -%}

with

-- sessions as (user_id, session_number): integer keys join far cheaper than the session_id hash
session_items as (

    select distinct user_id, session_number, item_id
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }} and ds > {{ ds() }} - {{ int_var('candidate_window_days') }}

),

bucket_items as (

    select * from session_items
    where true{{ bucket_filter('item_id', bucket, buckets) }}

),

final as (

    select
        {{ ds() }} as ds,
        a.item_id,
        b.item_id as neighbour_id,
        count(*) as sessions

    from bucket_items as a
    inner join session_items as b
        on a.user_id = b.user_id and a.session_number = b.session_number and a.item_id <> b.item_id
    group by a.item_id, b.item_id
    qualify row_number() over (partition by a.item_id order by count(*) desc, b.item_id)
        <= {{ int_var('covisitation_neighbours') }}

)

select * from final

{%- endmacro %}

{#- Item buckets of the co-visitation: one per covisitation_bucket_events events in the window. -#}
{% macro covisitation_buckets() -%}
    {{ return(buckets_for(
        "select count(*) from " ~ ref('int_events_sessionized') ~ " where ds <= " ~ ds()
        ~ " and ds > " ~ ds() ~ " - " ~ int_var('candidate_window_days'),
        'covisitation_bucket_events')) }}
{%- endmacro %}
