{#-
    The query of marts.user_histories for one bucket of users (macros/user_buckets.sql); the model
    documents what the rows are. Every CTE below is per user.
-#}
{% macro user_histories_query(bucket, buckets) -%}

{% set max_len = int_var('history_max_len') %}
{% set max_sessions = int_var('dsin_max_sessions') %}
{% set session_len = int_var('dsin_session_len') %}
{#- how the lists are cut, stored with every row: a partition is carried forward only under the same cut -#}
{% set spec = 'history_max_len=' ~ max_len ~ ',dsin_max_sessions=' ~ max_sessions ~ ',dsin_session_len=' ~ session_len %}
{#- the partition carried forward: the last one built before ds with this cut. None on the first build, on
    --full-refresh (the events were renumbered from raw) and without histories (max_len 0: no last event to
    find a user's last session by); then every event up to ds is read, as the first build does. -#}
{% set since = none %}
{% if is_incremental() and not flags.FULL_REFRESH and (max_len | int) > 0 %}
    {% set since = last_built_ds(this, "history_spec = '" ~ spec ~ "'") %}
{% endif %}

with

-- the events after the carried partition (normally those of ds); without one, every event up to ds
new_events as (

    select user_id, item_id, category, behavior, event_at, session_number, event_number
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}{% if since %} and ds > date '{{ since }}'{% endif %}{{ bucket_filter('user_id', bucket, buckets) }}

),

-- each user's last event and session: event and session numbers are 1, 2, ... per user without gaps,
-- so "the last N" is a range filter joined per user instead of a window over the events
user_state as (

    select user_id, max(event_number) as last_event_number, max(session_number) as last_session_number
    from new_events
    group by user_id

),

recent as (

    select
        new_events.*,
        new_events.event_number > user_state.last_event_number - {{ max_len }} as in_history,
        new_events.session_number > user_state.last_session_number - {{ max_sessions }} as in_sessions

    from new_events
    inner join user_state on new_events.user_id = user_state.user_id
    where new_events.event_number > user_state.last_event_number - {{ max_len }}
        or new_events.session_number > user_state.last_session_number - {{ max_sessions }}

),

-- the newest part of each history as parallel lists. One list of structs per user, split afterwards,
-- ordered by list_sort on a struct whose first field is the order key (unique per user), not by
-- list(... order by ...): DuckDB's ordered aggregate buffers and sorts every group on its own, 1.5x the
-- time at 10M events/day (bench/README.md, session 9)
new_histories as (

    select
        user_id,
        list_transform(history, lambda x: x.item_id) as item_ids,
        list_transform(history, lambda x: x.category) as categories,
        list_transform(history, lambda x: x.behavior) as behaviors,
        list_transform(history, lambda x: x.event_at) as event_ats,
        list_transform(history, lambda x: x.session_number) as session_numbers

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

-- the most recent behaviours of each of the last sessions among the new events, one row per session
new_session_tails as (

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

{% if since %}

-- the carried rows: each user's history and sessions as of the end of the carried partition's ds
previous as (

    select * from {{ this }}
    where ds = date '{{ since }}'{{ bucket_filter('user_id', bucket, buckets) }}

),

-- a user with new events: the carried history, then the new events, cut to the last max_len again
histories as (

    select
        new_histories.user_id,
        {%- for stored, fresh in [('item_id_history', 'item_ids'), ('category_history', 'categories'),
                                  ('behavior_history', 'behaviors'), ('event_at_history', 'event_ats'),
                                  ('session_number_history', 'session_numbers')] %}
        list_concat(coalesce(previous.{{ stored }}, []), new_histories.{{ fresh }})[-{{ max_len }}:] as {{ stored }}
            {{- ',' if not loop.last }}
        {%- endfor %}

    from new_histories
    left join previous on new_histories.user_id = previous.user_id

),

-- the carried sessions of the users with new events, one row per session. Sessions are numbered 1, 2, ...
-- per user without gaps and a carried row holds the last ones, so of its n sessions the k-th is number
-- last - n + k, where last is the session of its last history event
previous_session_tails as (

    select
        user_id,
        session_number_history[-1] - len(session_item_ids) + k as session_number,
        session_item_ids[k] as item_ids,
        session_category_ids[k] as categories

    from (
        select previous.*, unnest(range(1, len(previous.session_item_ids) + 1)) as k
        from previous
        semi join user_state on previous.user_id = user_state.user_id
    )

),

-- a session that runs on from the carried partition into the new events: its carried tail, then its new
-- events, cut to the last session_len again
session_tails as (

    select
        user_id,
        session_number,
        flatten(list_transform(parts, lambda p: p.item_ids))[-{{ session_len }}:] as item_ids,
        flatten(list_transform(parts, lambda p: p.categories))[-{{ session_len }}:] as categories

    from (
        select
            user_id,
            session_number,
            list_sort(list({'part': part, 'item_ids': item_ids, 'categories': categories})) as parts
        from (
            select *, 0 as part from previous_session_tails
            union all by name
            select *, 1 as part from new_session_tails
        )
        group by user_id, session_number
    )

),

{% else %}

histories as (

    select
        user_id,
        item_ids as item_id_history,
        categories as category_history,
        behaviors as behavior_history,
        event_ats as event_at_history,
        session_numbers as session_number_history

    from new_histories

),

session_tails as (

    select * from new_session_tails

),

{% endif %}

-- the last max_sessions sessions, oldest first
sessions as (

    select
        user_id,
        list_transform(sessions, lambda s: s.item_ids) as session_item_ids,
        list_transform(sessions, lambda s: s.categories) as session_category_ids

    from (
        select
            user_id,
            list_sort(list({'session_number': session_number, 'item_ids': item_ids, 'categories': categories}))[-{{ max_sessions }}:]
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
        cast(len(histories.item_id_history) as integer) as history_length,
        sessions.session_item_ids,
        sessions.session_category_ids,
        '{{ spec }}' as history_spec

    from histories
    inner join sessions on histories.user_id = sessions.user_id

    {% if since %}
    union all by name

    -- a user without new events keeps the carried row as it is
    select {{ ds() }} as ds, previous.* exclude (ds)
    from previous
    anti join user_state on previous.user_id = user_state.user_id
    {% endif %}

)

select * from final

{%- endmacro %}
