-- Training examples of ds. Every behaviour of ds is a positive (label 1) whose history is the user's
-- last history_max_len behaviours STRICTLY before it (event_at earlier than the event's; events at the
-- same instant are not history), oldest first. Each positive gets negatives_per_positive negatives
-- (label 0) sharing its history and context, with items drawn uniformly and reproducibly from the
-- catalogue as of ds among items the user never touched up to the end of ds.

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}

),

catalogue as (

    select * from {{ ref('stg_items') }}

),

profiles as (

    select * from {{ ref('stg_users') }}

),

day_events as (

    select * from events
    where ds = {{ ds() }}

),

-- the last N events of each active user before ds: together with ds's events, every history needed
earlier_events as (

    select * from events
    where ds < {{ ds() }}
        and user_id in (select user_id from day_events)
    qualify row_number() over (partition by user_id order by event_number desc)
        <= {{ int_var('history_max_len') }}

),

window_events as (

    select
        *,
        row_number() over (partition by user_id order by event_number) as window_position

    from (
        select * from earlier_events
        union all
        select * from day_events
    )

),

-- each user's window as parallel lists; a positive's history is a slice of them
user_sequences as (

    select
        user_id,
        list(item_id order by window_position) as item_ids,
        list(category order by window_position) as categories,
        list(behavior order by window_position) as behaviors,
        list(session_number order by window_position) as session_numbers

    from window_events
    group by user_id

),

-- events strictly before a positive = the window positions before the first event at the same instant
positives as (

    select
        *,
        min(window_position) over (partition by user_id, event_at) - 1 as events_before

    from window_events
    where ds = {{ ds() }}

),

positive_histories as (

    select
        positives.*,
        greatest(positives.events_before - {{ int_var('history_max_len') }}, 0) + 1 as history_start,
        list_slice(user_sequences.item_ids, history_start, positives.events_before) as item_id_history,
        list_slice(user_sequences.categories, history_start, positives.events_before) as category_history,
        list_slice(user_sequences.behaviors, history_start, positives.events_before) as behavior_history,
        list_slice(user_sequences.session_numbers, history_start, positives.events_before)
            as session_number_history

    from positives
    inner join user_sequences on positives.user_id = user_sequences.user_id

),

-- the catalogue as of ds, numbered 0 .. n-1 for uniform draws
item_pool as (

    select
        item_id,
        category,
        row_number() over (order by item_id) - 1 as pool_index

    from catalogue

),

pool_size as (

    select count(*) as items from item_pool

),

touched as (

    select distinct user_id, item_id from events

),

-- oversampled draws per positive: hash(seed, event_id, k) picks a pool index, so the same inputs give the
-- same draws on every run; collisions with touched items and repeated draws are dropped below
draws as (

    select
        positive_histories.event_id,
        positive_histories.user_id,
        draw_number.k,
        md5_number_lower(concat_ws('|', {{ int_var('negative_seed') }}, positive_histories.event_id, draw_number.k))
            % (select items from pool_size) as pool_index

    from positive_histories
    cross join range(3 * {{ int_var('negatives_per_positive') }} + 8) as draw_number(k)
    where (select items from pool_size) > 0

),

negative_items as (

    select
        draws.event_id,
        draws.k,
        item_pool.item_id,
        item_pool.category

    from draws
    inner join item_pool on item_pool.pool_index = draws.pool_index
    anti join touched on touched.user_id = draws.user_id and touched.item_id = item_pool.item_id
    -- an item drawn twice for one positive counts once (its first draw)
    qualify row_number() over (partition by draws.event_id, item_pool.item_id order by draws.k) = 1

),

negatives as (

    select
        event_id,
        item_id,
        category,
        row_number() over (partition by event_id order by k) as negative_number

    from negative_items
    qualify negative_number <= {{ int_var('negatives_per_positive') }}

),

-- positives and negatives share the positive's history and context; only the item and label differ
examples as (

    select
        positive_histories.event_id as example_id,
        positive_histories.event_id,
        positive_histories.item_id,
        positive_histories.category,
        1 as label

    from positive_histories

    union all

    select
        md5(concat_ws('|', negatives.event_id, 'negative', negatives.negative_number)) as example_id,
        negatives.event_id,
        negatives.item_id,
        negatives.category,
        0 as label

    from negatives

),

final as (

    select
        {{ ds() }} as ds,
        examples.example_id,
        positive_histories.user_id,
        examples.item_id,
        examples.category,
        cast(examples.label as integer) as label,
        positive_histories.event_at,
        profiles.age,
        profiles.gender,
        profiles.occupation,
        profiles.city,
        cast(hour(positive_histories.event_at) as integer) as hour,
        cast(isodow(positive_histories.event_at) as integer) as weekday,
        positive_histories.device,
        positive_histories.item_id_history,
        positive_histories.category_history,
        positive_histories.behavior_history,
        positive_histories.session_number_history,
        cast(len(positive_histories.item_id_history) as integer) as history_length

    from examples
    inner join positive_histories on examples.event_id = positive_histories.event_id
    left join profiles on positive_histories.user_id = profiles.user_id

)

select * from final
