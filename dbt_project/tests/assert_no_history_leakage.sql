-- Point in time: every positive of ds (a row of training_histories) carries exactly the user's last history_max_len behaviours
-- STRICTLY before its event_at, oldest first; DSIN sessions built from those earlier behaviours only
-- (the last dsin_max_sessions sessions, each its last dsin_session_len behaviours, the current one cut at
-- the last earlier event); DIEN negatives as many as the history has positions and never an item the
-- user touched up to ds. Anything at or after event_at (or stale, misaligned or missing) is a failure.
--
-- Reconstructed independently of the model, from the user's whole timeline: one probe per (user, event_at)
-- of ds's positives is placed on it, sorting before events of the same instant, so the running count of
-- events at a probe (n) is the number of events strictly before it. History element j of an example of
-- length h must be the event at position n - h + j; session i of m must be session number
-- (last earlier session) - m + i, and its element j the event at the session's cut start + j - 1. The
-- comparison is element by element through joins (no list building, which is what made it slow).
-- Every example of training_examples must point (event_id) at the history row of its positive, with the
-- same user and event_at, and every history row must have its positive example.

{% set max_len = int_var('history_max_len') %}
{% set max_sessions = int_var('dsin_max_sessions') %}
{% set session_len = int_var('dsin_session_len') %}

with

-- not materialized: the list columns are read from the table by the checks that need them (a materialized
-- copy of every list spilled to disk at 1M events/day and made the test several times slower)
positives as not materialized (

    select *, event_id as example_id from {{ ref('training_histories') }}
    where ds = {{ ds() }}

),

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}
        and user_id in (select user_id from positives)

),

timeline as (

    select user_id, event_at, 1 as is_event, item_id, behavior, category, session_number
    from events

    union all

    select distinct user_id, event_at, 0 as is_event, null, null, null, null
    from positives

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

event_positions as materialized (

    select user_id, events_so_far as position, item_id, behavior, category, session_number
    from positioned
    where is_event = 1

),

session_bounds as materialized (

    select user_id, session_number, min(position) as first_position, max(position) as last_position
    from event_positions
    group by user_id, session_number

),

-- per probe: events strictly before (n) and the session of the last of them (0 when none)
probes as materialized (

    select
        positioned.user_id,
        positioned.event_at,
        positioned.events_so_far as n,
        coalesce(last_event.session_number, 0) as last_session

    from positioned
    left join event_positions as last_event
        on last_event.user_id = positioned.user_id
        and last_event.position = positioned.events_so_far
    where positioned.is_event = 0

),

checked as not materialized (

    select
        positives.example_id,
        positives.user_id,
        positives.event_at,
        positives.history_length,
        positives.item_id_history,
        positives.behavior_history,
        positives.category_history,
        positives.neg_item_id_history,
        positives.session_item_ids,
        positives.session_category_ids,
        probes.n,
        probes.last_session

    from positives
    left join probes on probes.user_id = positives.user_id and probes.event_at = positives.event_at

),

-- lengths: history min(n, max_len) everywhere, sessions min(max_sessions, last session)
shape_failures as (

    select example_id from checked
    where n is null
        or history_length != least(n, {{ max_len }})
        or len(item_id_history) != history_length
        or len(behavior_history) != history_length
        or len(category_history) != history_length
        or len(neg_item_id_history) != history_length
        or len(session_item_ids) != least({{ max_sessions }}, last_session)
        or len(session_category_ids) != len(session_item_ids)

),

history_elements as (

    select
        example_id,
        user_id,
        n - history_length + generate_subscripts(item_id_history, 1) as position,
        unnest(item_id_history) as item_id,
        unnest(behavior_history) as behavior,
        unnest(category_history) as category

    from checked

),

history_failures as (

    select history_elements.example_id
    from history_elements
    left join event_positions
        on event_positions.user_id = history_elements.user_id
        and event_positions.position = history_elements.position
    where event_positions.item_id is distinct from history_elements.item_id
        or event_positions.behavior is distinct from history_elements.behavior
        or event_positions.category is distinct from history_elements.category

),

-- one row per (example, session): the session number it must be and that session's cut. Not
-- materialized: each of its two readers computes it again (writing and reading back a copy of every
-- session list was ~40 of the test's ~245 s of operator time at 10M events/day)
sessions as not materialized (

    select
        example_sessions.*,
        least(session_bounds.last_position, example_sessions.n) as slice_end,
        greatest(session_bounds.first_position, slice_end - {{ session_len }} + 1) as slice_start

    from (
        select
            example_id,
            user_id,
            n,
            last_session - len(session_item_ids) + generate_subscripts(session_item_ids, 1) as session_number,
            unnest(session_item_ids) as items,
            unnest(session_category_ids) as categories

        from checked
    ) as example_sessions
    left join session_bounds
        on session_bounds.user_id = example_sessions.user_id
        and session_bounds.session_number = example_sessions.session_number

),

session_failures as (

    select example_id from sessions
    where slice_start is null
        or len(items) != slice_end - slice_start + 1
        or len(categories) != len(items)

    union all

    select session_elements.example_id
    from (
        select
            example_id,
            user_id,
            slice_start - 1 + generate_subscripts(items, 1) as position,
            unnest(items) as item_id,
            unnest(categories) as category
        from sessions
    ) as session_elements
    left join event_positions
        on event_positions.user_id = session_elements.user_id
        and event_positions.position = session_elements.position
    where event_positions.item_id is distinct from session_elements.item_id
        or event_positions.category is distinct from session_elements.category

),

-- DIEN negatives of the positives: never an item the user touched up to ds
negative_failures as (

    select negative.example_id
    from (
        select example_id, user_id, unnest(neg_item_id_history) as item_id from checked
    ) as negative
    semi join events on events.user_id = negative.user_id and events.item_id = negative.item_id

),

-- examples share their positive's lists by reference: it must exist, be the same event, and have its
-- positive example (label 1, example_id = event_id)
example_failures as (

    select examples.example_id
    from {{ ref('training_examples') }} as examples
    left join positives on positives.event_id = examples.event_id
    where examples.ds = {{ ds() }}
        and (positives.event_id is null
             or positives.user_id is distinct from examples.user_id
             or positives.event_at is distinct from examples.event_at
             or (examples.label = 1 and examples.example_id != examples.event_id))

    union all

    select positives.example_id
    from positives
    anti join (
        select event_id from {{ ref('training_examples') }}
        where ds = {{ ds() }} and label = 1 and example_id = event_id
    ) as positive_examples on positive_examples.event_id = positives.event_id

),

failures as (

    select distinct example_id, check_name from (
        select example_id, 'shape' as check_name from shape_failures
        union all
        select example_id, 'history' from history_failures
        union all
        select example_id, 'sessions' from session_failures
        union all
        select example_id, 'touched_negative' from negative_failures
        union all
        select example_id, 'unlinked_example' from example_failures
    )

)

select * from failures
