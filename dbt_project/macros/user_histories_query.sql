{#-
    The query of marts.user_histories for one bucket of users (macros/user_buckets.sql); the model
    documents what the rows are. Every CTE below is per user.
-#}
{% macro user_histories_query(bucket, buckets) -%}

{% set max_len = int_var('history_max_len') %}
{% set max_sessions = int_var('dsin_max_sessions') %}
{% set session_len = int_var('dsin_session_len') %}

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

-- each user's last event and session: event and session numbers are 1, 2, ... per user without gaps,
-- so "the last N" is a range filter joined per user instead of a window over the whole history
user_state as (

    select user_id, max(event_number) as last_event_number, max(session_number) as last_session_number
    from events
    group by user_id

),

recent as (

    select
        events.*,
        events.event_number > user_state.last_event_number - {{ max_len }} as in_history,
        events.session_number > user_state.last_session_number - {{ max_sessions }} as in_sessions

    from events
    inner join user_state on events.user_id = user_state.user_id
    where events.event_number > user_state.last_event_number - {{ max_len }}
        or events.session_number > user_state.last_session_number - {{ max_sessions }}

),

-- one list of structs per user, split afterwards. Ordered by list_sort on a struct whose first field is
-- the order key (unique per user), not by list(... order by ...): DuckDB's ordered aggregate buffers and
-- sorts every group on its own, 1.5x the time at 10M events/day (bench/README.md, session 9)
histories as (

    select
        user_id,
        list_transform(history, lambda x: x.item_id) as item_id_history,
        list_transform(history, lambda x: x.category) as category_history,
        list_transform(history, lambda x: x.behavior) as behavior_history,
        list_transform(history, lambda x: x.event_at) as event_at_history,
        list_transform(history, lambda x: x.session_number) as session_number_history,
        cast(len(history) as integer) as history_length

    from (
        select
            user_id,
            coalesce(list_sort(list({
                'event_number': event_number, 'item_id': item_id, 'category': category, 'behavior': behavior,
                'event_at': event_at, 'session_number': session_number
            }) filter (where in_history)), []) as history

        from recent
        group by user_id
    )

),

-- the most recent behaviours of each of the last sessions, one row per session
session_tails as (

    select
        user_id,
        session_number,
        list_transform(tail, lambda x: x.item_id) as item_ids,
        list_transform(tail, lambda x: x.category) as categories

    from (
        -- the whole session sorted, then its last session_len (no window numbering events from the end)
        select
            user_id,
            session_number,
            list_sort(list({'event_number': event_number, 'item_id': item_id, 'category': category}))[-{{ session_len }}:]
                as tail
        from recent
        where in_sessions
        group by user_id, session_number
    )

),

sessions as (

    select
        user_id,
        list_transform(sessions, lambda s: s.item_ids) as session_item_ids,
        list_transform(sessions, lambda s: s.categories) as session_category_ids

    from (
        select
            user_id,
            list_sort(list({'session_number': session_number, 'item_ids': item_ids, 'categories': categories}))
                as sessions
        from session_tails
        group by user_id
    )

),

final as (

    select
        {{ ds() }} as ds,
        histories.user_id,
        histories.item_id_history,
        histories.category_history,
        histories.behavior_history,
        histories.event_at_history,
        histories.session_number_history,
        histories.history_length,
        sessions.session_item_ids,
        sessions.session_category_ids

    from histories
    inner join sessions on histories.user_id = sessions.user_id

)

select * from final

{%- endmacro %}
