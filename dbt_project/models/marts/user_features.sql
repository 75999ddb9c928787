-- Per user as of the end of ds: the profile (latest snapshot on or before ds), activity counts per
-- behaviour over 1, 7 and 30 days, the top category of the last 30 days and its share, and days since
-- the last event. Users: everyone with an event up to ds or a profile.

{% set behaviors = [('view', 'views'), ('cart', 'carts'), ('fav', 'favs'), ('buy', 'buys'), ('rating', 'ratings')] %}

with

-- the last event day needs every day; the counts only the 30-day window (read once, below)
last_event as (

    select user_id, max(ds) as last_event_ds
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}
    group by user_id

),

window_events as (

    select user_id, ds, behavior, category from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }} and ds > {{ ds() }} - 30

),

profiles as (

    select * exclude (ds) from {{ ref('int_user_profiles') }}
    where ds = {{ ds() }}

),

-- windows end at ds inclusive: 1d = ds, 7d = ds-6 .. ds, 30d = ds-29 .. ds (business days)
activity as (

    select
        user_id,
        count(*) filter (where ds = {{ ds() }}) as events_1d,
        count(*) filter (where ds > {{ ds() }} - 7) as events_7d,
        count(*) as events_30d,
        {%- for behavior, plural in behaviors %}
        count(*) filter (where ds = {{ ds() }} and behavior = '{{ behavior }}') as {{ plural }}_1d,
        count(*) filter (where ds > {{ ds() }} - 7 and behavior = '{{ behavior }}') as {{ plural }}_7d,
        count(*) filter (where behavior = '{{ behavior }}') as {{ plural }}_30d{{ ',' if not loop.last }}
        {%- endfor %}

    from window_events
    group by user_id

),

-- category affinity: the category with most of the user's 30-day events (ties: smallest name)
category_affinity as (

    select
        user_id,
        first(category order by category_events desc, category) as top_category_30d,
        max(category_events) / sum(category_events) as top_category_share_30d

    from (
        select user_id, category, count(*) as category_events
        from window_events
        where category is not null
        group by user_id, category
    )
    group by user_id

),

users as (

    select user_id from last_event
    union
    select user_id from profiles

),

final as (

    select
        {{ ds() }} as ds,
        users.user_id,
        profiles.age,
        profiles.gender,
        profiles.occupation,
        profiles.city,
        cast(coalesce(activity.events_1d, 0) as bigint) as events_1d,
        cast(coalesce(activity.events_7d, 0) as bigint) as events_7d,
        cast(coalesce(activity.events_30d, 0) as bigint) as events_30d,
        {%- for _, plural in behaviors %}
        {%- for days in (1, 7, 30) %}
        cast(coalesce(activity.{{ plural }}_{{ days }}d, 0) as bigint) as {{ plural }}_{{ days }}d,
        {%- endfor %}
        {%- endfor %}
        category_affinity.top_category_30d,
        cast(category_affinity.top_category_share_30d as double) as top_category_share_30d,
        -- null for a user with a profile but no behaviour yet
        cast({{ ds() }} - last_event.last_event_ds as integer) as days_since_last_event

    from users
    left join profiles on users.user_id = profiles.user_id
    left join last_event on users.user_id = last_event.user_id
    left join activity on users.user_id = activity.user_id
    left join category_affinity on users.user_id = category_affinity.user_id

)

select * from final
