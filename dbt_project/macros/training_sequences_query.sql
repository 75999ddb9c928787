{#-
    The query of marts.training_sequences for one bucket of users (macros/user_buckets.sql); the
    model documents what the rows are. Every CTE below is per user except item_pool (all items of ds).
-#}
{% macro training_sequences_query(bucket, buckets) -%}

{% set max_len = int_var('history_max_len') %}
{% set max_sessions = int_var('dsin_max_sessions') %}
{% set session_len = int_var('dsin_session_len') %}

with

-- only the columns the lists and keys need (session_id, value and device would ride along every window row)
events as (

    select ds, event_id, user_id, item_id, category, behavior, event_at, session_number, event_number
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

day_events as (

    select * from events
    where ds = {{ ds() }}

),

-- numbering per user is 1, 2, ... without gaps (events and sessions), so lookbacks are range filters
day_users as (

    select
        user_id,
        min(event_number) as first_event_number,
        min(session_number) as first_session_number

    from day_events
    group by user_id

),

-- before ds, only what a history or a session of ds can reach: the last max_len events, and the last
-- session_len events of each of the last max_sessions sessions
earlier_events as (

    select events.*
    from events
    inner join day_users on events.user_id = day_users.user_id
    where events.ds < {{ ds() }}
        and (events.event_number >= day_users.first_event_number - {{ max_len }}
             or events.session_number >= day_users.first_session_number - {{ max_sessions }})
    qualify events.event_number >= day_users.first_event_number - {{ max_len }}
        or row_number() over (
            partition by events.user_id, events.session_number order by events.event_number desc
        ) <= {{ session_len }}

),

window_events as materialized (

    select
        *,
        {{ hex_key('event_id') }} as event_key,
        row_number() over (partition by user_id order by event_number) as window_position,
        -- sessions in the window are consecutive numbers, so this is the session's index in the window
        session_number - min(session_number) over (partition by user_id) + 1 as session_rank

    from (
        select * from earlier_events
        union all
        select * from day_events
    )

),

{{ item_pool_ctes() }}

-- everything the active users touched up to the end of ds: never a negative
touched as materialized (

    select distinct events.user_id, events.item_id
    from events
    semi join day_users on events.user_id = day_users.user_id

),

-- DIEN auxiliary negatives: one uniform untouched item per window event. A first draw for every event;
-- the few that hit a touched item draw again (up to 16 times, then the position stays null)
aux_first as materialized (

    select draws.user_id, draws.event_id, draws.event_key, item_pool.item_id
    from (
        select
            user_id,
            event_id,
            event_key,
            {{ rand31('event_key', 3, 0) }} % (select nullif(items, 0) from pool_size) as pool_index
        from window_events
    ) as draws
    inner join item_pool on item_pool.pool_index = draws.pool_index

),

aux_retry as (

    select draws.event_id, draws.k, item_pool.item_id, item_pool.category
    from (
        select
            aux_first.user_id,
            aux_first.event_id,
            draw.k,
            {{ rand31('aux_first.event_key', 3, 'draw.k') }} % (select nullif(items, 0) from pool_size) as pool_index
        from aux_first
        semi join touched on touched.user_id = aux_first.user_id and touched.item_id = aux_first.item_id
        cross join range(1, 17) as draw(k)
    ) as draws
    inner join item_pool on item_pool.pool_index = draws.pool_index
    anti join touched on touched.user_id = draws.user_id and touched.item_id = item_pool.item_id
    qualify row_number() over (partition by draws.event_id order by draws.k) = 1

),

aux_negatives as (

    select aux_first.event_id, aux_first.item_id, item_pool.category
    from aux_first
    inner join item_pool on item_pool.item_id = aux_first.item_id
    anti join touched on touched.user_id = aux_first.user_id and touched.item_id = aux_first.item_id

    union all

    select event_id, item_id, category from aux_retry

),

-- each user's window as parallel lists (oldest first); histories and sessions are slices of them.
-- One list of structs, split afterwards, ordered by list_sort on its first field (window_position,
-- unique per user): DuckDB's ordered aggregate (list(... order by ...)) buffers and sorts every group on
-- its own, the slowest operator of this query at 10M events/day (bench/README.md, session 9)
user_sequences as materialized (

    select
        user_id,
        list_transform(window_rows, lambda x: x.item_id) as item_ids,
        list_transform(window_rows, lambda x: x.category) as categories,
        list_transform(window_rows, lambda x: x.behavior) as behaviors,
        list_transform(window_rows, lambda x: x.session_number) as session_numbers,
        list_transform(window_rows, lambda x: x.session_rank) as session_ranks,
        list_transform(window_rows, lambda x: x.neg_item_id) as neg_item_ids,
        list_transform(window_rows, lambda x: x.neg_category) as neg_categories,
        list_transform(window_rows, lambda x: x.event_number) as event_numbers

    from (
        select
            window_events.user_id,
            list_sort(list({
                'window_position': window_events.window_position,
                'item_id': window_events.item_id,
                'category': window_events.category,
                'behavior': window_events.behavior,
                'session_number': window_events.session_number,
                'session_rank': window_events.session_rank,
                'neg_item_id': aux_negatives.item_id,
                'neg_category': aux_negatives.category,
                'event_number': window_events.event_number
            })) as window_rows

        from window_events
        left join aux_negatives on window_events.event_id = aux_negatives.event_id
        group by window_events.user_id
    )

),

-- first and last window position of every session, indexed by session_rank
user_sessions as (

    select
        user_id,
        list_transform(bounds, lambda b: b.first_position) as session_starts,
        list_transform(bounds, lambda b: b.last_position) as session_ends

    from (
        select
            user_id,
            list_sort(list({
                'session_rank': session_rank, 'first_position': first_position, 'last_position': last_position
            })) as bounds

        from (
            select user_id, session_rank, min(window_position) as first_position, max(window_position) as last_position
            from window_events
            group by user_id, session_rank
        )
        group by user_id
    )

),

-- events strictly before a positive = the window positions before the first event at the same instant
positives as (

    select
        *,
        min(window_position) over (partition by user_id, event_at) - 1 as events_before

    from window_events
    where ds = {{ ds() }}

),

-- the positives of each user in time order (window position), as lists parallel to each other; one
-- list of structs sorted on its first field, split afterwards (as user_sequences)
user_positives as (

    select
        user_id,
        list_transform(positive_rows, lambda x: x.event_id) as event_ids,
        list_transform(positive_rows, lambda x: x.event_at) as event_ats,
        list_transform(positive_rows, lambda x: x.events_before) as events_before

    from (
        select
            user_id,
            list_sort(list({
                'window_position': window_position, 'event_id': event_id, 'event_at': event_at,
                'events_before': events_before
            })) as positive_rows

        from positives
        group by user_id
    )

),

final as (

    select
        {{ ds() }} as ds,
        user_sequences.user_id,
        user_sequences.item_ids,
        user_sequences.categories,
        user_sequences.behaviors,
        user_sequences.session_numbers,
        user_sequences.session_ranks,
        user_sequences.neg_item_ids,
        user_sequences.neg_categories,
        user_sequences.event_numbers,
        user_sessions.session_starts,
        user_sessions.session_ends,
        user_positives.event_ids,
        user_positives.event_ats,
        user_positives.events_before

    from user_sequences
    inner join user_sessions on user_sequences.user_id = user_sessions.user_id
    inner join user_positives on user_sequences.user_id = user_positives.user_id

)

select * from final

{%- endmacro %}
