-- Per item as of the end of ds: catalogue attributes (latest snapshot on or before ds), a price bucket,
-- and popularity and conversion over the last 1, 7 and 30 days. Items: the catalogue plus any item with
-- a behaviour in the 30-day window.

with

-- only the window is read: 30 days of events, never the whole history
events as (

    select item_id, ds, behavior from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }} and ds > {{ ds() }} - 30

),

catalogue as (

    select * from {{ ref('stg_items') }}

),

-- windows end at ds inclusive: 1d = ds, 7d = ds-6 .. ds, 30d = ds-29 .. ds (business days)
activity as (

    select
        item_id,
        count(*) filter (where ds = {{ ds() }}) as events_1d,
        count(*) filter (where ds > {{ ds() }} - 7) as events_7d,
        count(*) as events_30d,
        count(*) filter (where ds > {{ ds() }} - 7 and behavior = 'view') as views_7d,
        count(*) filter (where behavior = 'view') as views_30d,
        count(*) filter (where ds = {{ ds() }} and behavior = 'buy') as buys_1d,
        count(*) filter (where ds > {{ ds() }} - 7 and behavior = 'buy') as buys_7d,
        count(*) filter (where behavior = 'buy') as buys_30d

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
        -- log2 buckets (0: under 1, 1: 1 .. 3, 2: 3 .. 7, ...): stable across days, unlike quantiles
        cast(floor(log2(1 + catalogue.price)) as integer) as price_bucket,
        cast(coalesce(activity.events_1d, 0) as bigint) as events_1d,
        cast(coalesce(activity.events_7d, 0) as bigint) as events_7d,
        cast(coalesce(activity.events_30d, 0) as bigint) as events_30d,
        cast(coalesce(activity.buys_1d, 0) as bigint) as buys_1d,
        cast(coalesce(activity.buys_7d, 0) as bigint) as buys_7d,
        cast(coalesce(activity.buys_30d, 0) as bigint) as buys_30d,
        -- buys per view; null without views (e.g. rating-only sources such as MovieLens)
        cast(activity.buys_7d / nullif(activity.views_7d, 0) as double) as conversion_7d,
        cast(activity.buys_30d / nullif(activity.views_30d, 0) as double) as conversion_30d

    from items
    left join catalogue on items.item_id = catalogue.item_id
    left join activity on items.item_id = activity.item_id

)

select * from final
