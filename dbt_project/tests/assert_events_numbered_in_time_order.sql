-- The timeline numbering that point-in-time checks rely on: int_events_sessionized.event_number is each
-- event's position in its user's whole timeline, 1, 2, ... in (event_at, item_id, behavior) order.
-- Checked for the events of ds, which is enough by induction over the days: every day's events come
-- after the earlier days' (ingest rejects an event outside its ds: `ts_outside_ds`, re-checked here), so
-- the numbers of ds must continue the user's numbering before ds without a gap (its last number equals
-- its count of events) in that order. The leakage test (assert_no_history_leakage) then looks events up
-- by position instead of renumbering every user's whole history each day.
--
-- Cost: one window over the events of ds and a count per active user of the events before ds.

with

day_events as (

    select user_id, event_id, event_at, item_id, behavior, event_number
    from {{ ref('int_events_sessionized') }}
    where ds = {{ ds() }}

),

earlier as (

    select user_id, count(*) as events, max(event_number) as last_number
    from {{ ref('int_events_sessionized') }}
    where ds < {{ ds() }}
        and user_id in (select user_id from day_events)
    group by user_id

),

numbered as (

    select
        day_events.*,
        coalesce(earlier.events, 0) + row_number() over (
            partition by day_events.user_id order by day_events.event_at, day_events.item_id, day_events.behavior
        ) as expected_event_number,
        case
            when day_events.event_at < {{ ds() }} or day_events.event_at >= {{ ds() }} + interval 1 day
                then 'event_at_outside_ds'
            when coalesce(earlier.last_number, 0) != coalesce(earlier.events, 0) then 'gap_before_ds'
        end as day_failure

    from day_events
    left join earlier on earlier.user_id = day_events.user_id

)

select
    event_id,
    coalesce(day_failure, 'out_of_order') as check_name,
    event_number,
    expected_event_number

from numbered
where day_failure is not null or event_number != expected_event_number
