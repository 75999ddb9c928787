-- Popularity of the items with a behaviour in the last candidate_window_days up to ds (events in the
-- window), ranked globally and within the item's catalogue category as of ds (ties by item_id). The
-- category and global pools of marts.scoring_candidate_lists are the top ranks of this table; it is a
-- table of its own so that the list mart, built in user buckets, reads it instead of re-counting the
-- window once per bucket. Incremental by ds like the marts (delete+insert of ds): a rerun or backfill of
-- an older ds replaces that ds's rows and leaves the others as they were (the mart reads ds = ds).

{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='ds', on_schema_change='fail', full_refresh=false, pre_hook="{{ delete_ds_partition() }}") }}

with

window_events as (

    select item_id
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }} and ds > {{ ds() }} - {{ int_var('candidate_window_days') }}

),

catalogue as (

    select item_id, category from {{ ref('stg_items') }}

),

popularity as (

    select item_id, count(*) as events from window_events group by item_id

),

final as (

    select
        {{ ds() }} as ds,
        popularity.item_id,
        catalogue.category,
        popularity.events,
        row_number() over (order by popularity.events desc, popularity.item_id) as global_rank,
        row_number() over (
            partition by catalogue.category order by popularity.events desc, popularity.item_id
        ) as category_rank

    from popularity
    left join catalogue on popularity.item_id = catalogue.item_id

)

select * from final
