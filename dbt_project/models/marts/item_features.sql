-- Per item as of the end of ds: catalogue attributes (latest snapshot on or before ds) and the last
-- 7 days' popularity. Items: the catalogue plus any item with a behaviour in the window.

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }} and ds > {{ ds() }} - 7

),

catalogue as (

    select * from {{ ref('stg_items') }}

),

activity as (

    select
        item_id,
        count(*) as events_7d,
        count(*) filter (where behavior = 'buy') as buys_7d

    from events
    group by item_id

),

items as (

    select item_id from catalogue
    union
    select item_id from activity

),

final as (

    select
        {{ ds() }} as ds,
        items.item_id,
        catalogue.category,
        catalogue.brand,
        cast(catalogue.price as double) as price,
        cast(coalesce(activity.events_7d, 0) as bigint) as events_7d,
        cast(coalesce(activity.buys_7d, 0) as bigint) as buys_7d

    from items
    left join catalogue on items.item_id = catalogue.item_id
    left join activity on items.item_id = activity.item_id

)

select * from final
