-- Per user as of the end of ds: the profile (latest snapshot on or before ds) and activity counts.
-- Users: everyone with an event up to ds or a profile.

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}

),

profiles as (

    select * from {{ ref('stg_users') }}

),

-- windows end at ds inclusive: 1d = ds, 7d = ds-6 .. ds, 30d = ds-29 .. ds (business days)
activity as (

    select
        user_id,
        count(*) filter (where ds = {{ ds() }}) as events_1d,
        count(*) filter (where ds > {{ ds() }} - 7) as events_7d,
        count(*) filter (where ds > {{ ds() }} - 30) as events_30d,
        max(ds) as last_event_ds

    from events
    group by user_id

),

users as (

    select user_id from activity
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
        -- null for a user with a profile but no behaviour yet
        cast({{ ds() }} - activity.last_event_ds as integer) as days_since_last_event

    from users
    left join profiles on users.user_id = profiles.user_id
    left join activity on users.user_id = activity.user_id

)

select * from final
