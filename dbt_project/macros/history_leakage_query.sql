{#-
    The query of intermediate.int_history_leakage_failures for one bucket of users (macros/user_buckets.sql);
    tests/assert_no_history_leakage.sql fails on its rows of ds. What it checks:
-#}

-- Point in time: every positive of ds carries exactly the user's last history_max_len behaviours STRICTLY
-- before its event_at, oldest first; DSIN sessions built from those earlier behaviours only (the last
-- dsin_max_sessions sessions, each its last dsin_session_len behaviours, the current one cut at the last
-- earlier event); DIEN negatives never an item the user touched up to ds. Anything at or after event_at
-- (or stale, misaligned or missing) is a failure.
--
-- What is checked is what is stored: marts.training_sequences, one window of behaviours per user, from
-- which the view marts.training_histories slices each positive's lists (its slicing is pinned by the
-- dbt unit tests in models/marts/_marts.yml and by tests/data/test_dbt.py). Checking the window costs
-- O(window) instead of O(positives x history length): at 10M events/day the element-by-element check of
-- every positive's lists joined ~160M history elements and read the view several times (~100 s).
--
-- Reconstructed independently of the models from the user's timeline, looked up by position:
-- int_events_sessionized.event_number is the event's position in the user's whole timeline (1, 2, ... in
-- (event_at, item_id, behavior) order; assert_events_numbered_in_time_order checks that for every ds).
-- So the events strictly before a positive are n = (the first event number at its instant) - 1, and the
-- events a window names are found by number; only the window's sessions are read from the timeline,
-- never the users' whole histories (which grow every day: renumbering them here ran out of the 3GB
-- limit at 10M events/day). Then:
--   window      every window element is the timeline event its event_number names (item, behaviour,
--               category, session), event numbers strictly increase along the window, session ranks
--               number the window's sessions 1, 2, ... and session_starts / session_ends bound them,
--               the lists are aligned, no DIEN negative was touched (any event up to ds);
--   history     a positive's last earlier window element is event n, which is at an earlier instant
--               than the positive, and the min(n, max_len) elements before it are events
--               n - min(n, max_len) + 1 .. n, so the slice is exactly those events;
--   sessions    the window holds the min(max_sessions, last earlier session) most recent sessions, and
--               of each the positive takes, the events from its cut start to its cut end;
--   examples    every positive of training_example_lists (the examples of the view training_examples
--               carry its event_id) points at its history row,
--               with the same user and event_at, and every history row has its positive example.

{% macro history_leakage_query(bucket, buckets) -%}

{% set max_len = int_var('history_max_len') %}
{% set max_sessions = int_var('dsin_max_sessions') %}
{% set session_len = int_var('dsin_session_len') %}

with

-- not materialized: each reader scans only the list columns it needs (a materialized copy of every
-- list was read back ~7 times)
sequences as not materialized (

    select * from {{ ref('training_sequences') }}
    where ds = {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

-- one row per positive as stored; and as the view gives it (the link to the examples)
positives as (

    select
        user_id,
        unnest(event_ids) as event_id,
        unnest(event_ats) as event_at,
        unnest(events_before) as events_before

    from sequences

),

histories as (

    select ds, event_id, user_id, event_at, event_id as example_id from {{ ref('training_histories') }}
    where ds = {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

window_elements as (

    select
        user_id,
        generate_subscripts(item_ids, 1) as w,
        unnest(item_ids) as item_id,
        unnest(categories) as category,
        unnest(behaviors) as behavior,
        unnest(session_numbers) as session_number,
        unnest(session_ranks) as session_rank,
        unnest(event_numbers) as position

    from sequences

),

-- per user, the oldest session the window reaches (every window element lies in it or a later one)
reach as (

    select user_id, list_min(session_numbers) as first_session
    from sequences

),

-- the timeline's events of those sessions, by position; every event a positive's history or sessions can
-- name is one of them, and the last event before each positive too (it is in the window or the window
-- is wrong, which the history check reports)
event_positions as (

    select
        events.user_id,
        events.event_number as position,
        events.event_at,
        events.item_id,
        events.behavior,
        events.category,
        events.session_number

    from {{ ref('int_events_sessionized') }} as events
    inner join reach
        on reach.user_id = events.user_id
        and events.session_number >= reach.first_session
    where events.ds <= {{ ds() }}{{ bucket_filter('events.user_id', bucket, buckets) }}

),

session_bounds as (

    select user_id, session_number, min(position) as first_position, max(position) as last_position
    from event_positions
    group by user_id, session_number

),

-- per instant of ds with a positive: events strictly before it (n: the positions before the first event at
-- that instant), the session of the last of them (0 when none) and its time
probes as (

    select
        instants.user_id,
        instants.event_at,
        instants.n,
        coalesce(last_event.session_number, 0) as last_session,
        last_event.event_at as last_event_at,
        instants.n > 0 and last_event.position is null as last_event_missing

    from (
        select user_id, event_at, min(event_number) - 1 as n
        from {{ ref('int_events_sessionized') }}
        where ds = {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}
        group by user_id, event_at
    ) as instants
    left join event_positions as last_event
        on last_event.user_id = instants.user_id
        and last_event.position = instants.n

),

-- DIEN negatives the user touched (any event up to ds): each user's negatives against every event of its
-- timeline, a hash lookup per event instead of a list of touched items per user
touched_negatives as (

    select distinct events.user_id
    from {{ ref('int_events_sessionized') }} as events
    semi join (
        select user_id, unnest(neg_item_ids) as item_id from sequences
    ) as negatives on negatives.user_id = events.user_id and negatives.item_id = events.item_id
    where events.ds <= {{ ds() }}{{ bucket_filter('events.user_id', bucket, buckets) }}

),

-- per user: aligned lists, event numbers strictly increasing along the window, session ranks numbering
-- the window's sessions from 1, bounds for each rank, no touched DIEN negative
window_failures as (

    select
        sequences.user_id,
        case
            when len(categories) != len(item_ids) or len(behaviors) != len(item_ids)
                or len(session_numbers) != len(item_ids) or len(session_ranks) != len(item_ids)
                or len(neg_item_ids) != len(item_ids) or len(neg_categories) != len(item_ids)
                or len(event_numbers) != len(item_ids)
                or len(session_ends) != len(session_starts)
                or len(session_starts) != coalesce(list_max(session_ranks), 0)
                or len(event_ats) != len(event_ids) or len(events_before) != len(event_ids)
                or list_sort(event_numbers) != event_numbers
                or list_unique(event_numbers) != len(event_numbers)
                or session_ranks != list_transform(session_numbers, lambda x: x - list_min(session_numbers) + 1)
                then 'window'
        end as check_name

    from sequences

    union all

    select user_id, 'touched_negative' from touched_negatives

    union all

    -- every window element is the timeline event its event_number names
    select window_elements.user_id, 'window'
    from window_elements
    left join event_positions
        on event_positions.user_id = window_elements.user_id
        and event_positions.position = window_elements.position
    where event_positions.position is null
        or event_positions.item_id is distinct from window_elements.item_id
        or event_positions.behavior is distinct from window_elements.behavior
        or event_positions.category is distinct from window_elements.category
        or event_positions.session_number is distinct from window_elements.session_number

),

-- per (user, session rank): its window positions and events, against the stored bounds
window_sessions as (

    select
        window_elements.user_id,
        window_elements.session_rank,
        window_elements.session_number,
        min(window_elements.w) as first_w,
        max(window_elements.w) as last_w,
        min(window_elements.position) as first_event,
        max(window_elements.position) as last_event,
        count(*) as events

    from window_elements
    group by window_elements.user_id, window_elements.session_rank, window_elements.session_number

),

session_bound_failures as (

    select window_sessions.user_id, 'window' as check_name
    from window_sessions
    inner join sequences on sequences.user_id = window_sessions.user_id
    -- a session's window elements are consecutive events (positions increase strictly along the window)
    where sequences.session_starts[window_sessions.session_rank] is distinct from window_sessions.first_w
        or sequences.session_ends[window_sessions.session_rank] is distinct from window_sessions.last_w
        or window_sessions.last_event - window_sessions.first_event + 1 != window_sessions.events
        or window_sessions.last_w - window_sessions.first_w + 1 != window_sessions.events

),

-- per positive: n, its last earlier session and that event's time. Materialized narrow (scalars only)
-- before the window's lists join in: joined first, every positive's row carried its user's lists into the
-- hash table (10M events/day: a 31 s join spilling gigabytes)
positive_probes as materialized (

    select
        positives.event_id,
        positives.user_id,
        positives.event_at,
        positives.events_before,
        probes.n,
        probes.last_session,
        probes.last_event_at,
        probes.last_event_missing

    from positives
    left join probes on probes.user_id = positives.user_id and probes.event_at = positives.event_at

),

-- per positive: the window positions the view slices
checked as (

    select
        positive_probes.*,
        least(positive_probes.n, {{ max_len }}) as h,
        sequences.event_numbers[positive_probes.events_before] as last_before,
        sequences.event_numbers[positive_probes.events_before - h + 1] as first_taken,
        coalesce(sequences.session_ranks[positive_probes.events_before], 0) as last_rank

    from positive_probes
    inner join sequences on sequences.user_id = positive_probes.user_id

),

history_failures as (

    select event_id, 'history' as check_name from checked
    where n is null
        or last_event_missing
        or last_event_at >= event_at
        or events_before < h
        or (n = 0 and events_before != 0)
        or (h > 0 and (last_before is distinct from n or first_taken is distinct from n - h + 1))
        or last_rank < least({{ max_sessions }}, last_session)

),

-- the sessions a positive takes (ranks last_rank - k + 1, k = 1 .. min(max_sessions, last_rank)) must hold
-- their cut: from max(first event, cut end - session_len + 1) to the cut end. Per user, every rank from the
-- lowest one taken holds its session's last min(session_len, size) events up to the end of ds (an earlier
-- session's cut); the current session of each positive holds its events from
-- max(first event, n - session_len + 1) to n
lowest_taken as (

    select user_id, min(greatest(last_rank - {{ max_sessions }} + 1, 1)) as lowest_rank
    from checked
    where last_rank > 0
    group by user_id

),

session_failures as (

    select cast(window_sessions.user_id as varchar) as event_id, 'sessions' as check_name
    from window_sessions
    inner join lowest_taken on lowest_taken.user_id = window_sessions.user_id
    left join session_bounds
        on session_bounds.user_id = window_sessions.user_id
        and session_bounds.session_number = window_sessions.session_number
    where window_sessions.session_rank >= lowest_taken.lowest_rank
        and (session_bounds.first_position is null
             or window_sessions.last_event != session_bounds.last_position
             or window_sessions.first_event
                > greatest(session_bounds.first_position, session_bounds.last_position - {{ session_len }} + 1))

    union all

    select checked.event_id, 'sessions'
    from checked
    left join window_sessions
        on window_sessions.user_id = checked.user_id
        and window_sessions.session_rank = checked.last_rank
    left join session_bounds
        on session_bounds.user_id = checked.user_id
        and session_bounds.session_number = window_sessions.session_number
    where checked.last_rank > 0
        and (session_bounds.first_position is null
             or window_sessions.last_event < checked.n
             or window_sessions.first_event
                > greatest(session_bounds.first_position, checked.n - {{ session_len }} + 1))

),

-- examples share their positive's lists by reference: each stored positive (training_example_lists, whose
-- row the view training_examples turns into the positive and its negatives, all with its event_id, user
-- and time) has its history row, of the same user and event time, and every history row its positive
example_failures as (

    -- one full join both ways (two joins of every positive cost twice the time at 10M events/day)
    select coalesce(examples.event_id, histories.example_id) as example_id
    from (
        select event_id, user_id, event_at from {{ ref('training_example_lists') }}
        where ds = {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}
    ) as examples
    full join histories on histories.event_id = examples.event_id
    where examples.event_id is null
        or histories.event_id is null
        or histories.user_id is distinct from examples.user_id
        or histories.event_at is distinct from examples.event_at

),

failures as (

    select distinct example_id, check_name from (
        select cast(user_id as varchar) as example_id, check_name from window_failures
        union all
        select cast(user_id as varchar), check_name from session_bound_failures
        union all
        select event_id, check_name from history_failures
        union all
        select event_id, check_name from session_failures
        union all
        select example_id, 'unlinked_example' from example_failures
    )
    where check_name is not null

)

select {{ ds() }} as ds, example_id, check_name from failures

{%- endmacro %}
