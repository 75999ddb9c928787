-- Point in time: every training example of ds carries exactly the user's last history_max_len behaviours
-- STRICTLY before its event_at, oldest first. A history holding anything at or after event_at (or a
-- stale or misaligned one) differs from this reconstruction and is returned as a failure.
--
-- Reconstructed independently of the model: the examples are placed on each user's timeline as probes
-- that sort before events of the same instant, so the running count of events at a probe is the number of
-- events strictly before it; the expected history is the events at the positions just before that.

with

examples as (

    select * from {{ ref('training_examples') }}
    where ds = {{ ds() }}

),

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}
        and user_id in (select user_id from examples)

),

timeline as (

    select user_id, event_at, 1 as is_event, null as example_id, item_id, behavior
    from events

    union all

    select user_id, event_at, 0 as is_event, example_id, null as item_id, null as behavior
    from examples

),

positioned as (

    select
        *,
        cast(sum(is_event) over (
            partition by user_id order by event_at, is_event, item_id, behavior
            rows between unbounded preceding and current row
        ) as bigint) as events_so_far

    from timeline

),

expected_positions as (

    select
        example_id,
        user_id,
        unnest(range(
            events_so_far - least(events_so_far, {{ int_var('history_max_len') }}) + 1, events_so_far + 1
        )) as position

    from positioned
    where is_event = 0

),

expected as (

    select
        expected_positions.example_id,
        list(positioned.item_id order by expected_positions.position) as item_id_history,
        list(positioned.behavior order by expected_positions.position) as behavior_history

    from expected_positions
    inner join positioned
        on positioned.is_event = 1
        and positioned.user_id = expected_positions.user_id
        and positioned.events_so_far = expected_positions.position
    group by expected_positions.example_id

),

failures as (

    select
        examples.example_id,
        examples.user_id,
        examples.event_at,
        examples.item_id_history,
        expected.item_id_history as expected_item_id_history

    from examples
    left join expected on examples.example_id = expected.example_id
    where examples.history_length != coalesce(len(expected.item_id_history), 0)
        or len(examples.item_id_history) != examples.history_length
        or (examples.history_length > 0 and (
            examples.item_id_history is distinct from expected.item_id_history
            or examples.behavior_history is distinct from expected.behavior_history
        ))

)

select * from failures
