{#-
    The query of marts.scoring_candidate_lists for one bucket of users (macros/user_buckets.sql); the
    model documents what the rows are. Every CTE is per user except the pools (from
    intermediate.int_item_popularity) and the co-visits (intermediate.int_item_covisitation).
-#}
{% macro scoring_candidate_lists_query(bucket, buckets) -%}

{% set per_user = int_var('candidates_per_user') %}
{% set pool_size = 2 * (per_user | int) %}
{% set include_touched = var('candidates_include_touched', false) in (true, 'true', 'True', 1, '1') %}

with

-- the bucket's users only; sessions as (user_id, session_number)
events as (

    select user_id, item_id, session_number, event_number, ds
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

window_events as (

    select * from events
    where ds > {{ ds() }} - {{ int_var('candidate_window_days') }}

),

-- popularity ranks over the window, globally and within the item's category as of ds (every user's
-- events count: intermediate.int_item_popularity, computed once for all buckets)
ranked_items as (

    select item_id, category, global_rank, category_rank
    from {{ ref('int_item_popularity') }}
    where ds = {{ ds() }}

),

-- Shared pools as single lists, looked up by position (a per-user copy of a pool would be the
-- 33M-element cost this model avoids): category k's top pool_size items sit at positions
-- (k - 1) * pool_size + rank (NULL past the category's size); the global top pool_size items with
-- their categories.
pool_categories as (

    select category, row_number() over (order by category) - 1 as category_index, count(*) as size
    from ranked_items
    where category is not null and category_rank <= {{ pool_size }}
    group by category

),

category_pool as (

    select list(ranked_items.item_id order by slots.position) as items
    from (
        select
            pool_categories.category,
            pool_categories.category_index * {{ pool_size }} + ranks.rank as position,
            ranks.rank
        from pool_categories
        cross join range(1, {{ pool_size }} + 1) as ranks(rank)
    ) as slots
    left join ranked_items
        on slots.category = ranked_items.category and slots.rank = ranked_items.category_rank

),

global_pool as (

    select
        list(item_id order by global_rank) as items,
        list(coalesce(category, '') order by global_rank) as categories

    from ranked_items
    where global_rank <= {{ pool_size }}

),

-- ---------------------------------------------------------------- co-visitation

-- each item's top neighbours over every user's sessions of the window (intermediate.int_item_covisitation)
covisits as (

    select item_id, neighbour_id, sessions
    from {{ ref('int_item_covisitation') }}
    where ds = {{ ds() }}

),

user_items as (

    select user_id, item_id, max(event_number) as last_event, count(*) as events
    from window_events
    group by user_id, item_id

),

user_seeds as (

    select user_id, item_id from user_items
    qualify row_number() over (partition by user_id order by last_event desc)
        <= {{ int_var('covisitation_seeds') }}

),

covisited as (

    select
        user_seeds.user_id,
        covisits.neighbour_id as item_id,
        sum(covisits.sessions) as score

    from user_seeds
    inner join covisits on user_seeds.item_id = covisits.item_id
    group by user_seeds.user_id, covisits.neighbour_id

),

-- what a user may not be recommended again ({{ 'nothing: candidates_include_touched' if include_touched else 'every item touched up to ds' }})
touched as (

    {% if include_touched %}
        select user_id, item_id from events where false
    {% else %}
        select user_id, item_id from events
    {% endif %}

),

covisitation as (

    select
        user_id,
        list(item_id order by score desc, item_id)[1:{{ per_user }}] as items

    from (select * from covisited anti join touched using (user_id, item_id))
    group by user_id

),

-- ---------------------------------------------------------------- popularity in the user's categories

user_categories as (

    select
        user_items.user_id,
        ranked_items.category,
        row_number() over (
            partition by user_items.user_id order by sum(user_items.events) desc, ranked_items.category
        ) as affinity

    from user_items
    inner join ranked_items on user_items.item_id = ranked_items.item_id
    where ranked_items.category is not null
    group by user_items.user_id, ranked_items.category
    qualify affinity <= 3

),

-- touched or co-visited items (already a candidate): the pool positions a user skips. Duplicates
-- (an item touched twice) are harmless: they only widen the range a category's share is cut from.
skipped as (

    select user_id, item_id from touched
    union all
    select user_id, item_id from covisited

),

user_skips as (

    select
        skipped.user_id,
        list(pool_categories.category_index * {{ pool_size }} + ranked_items.category_rank)
            filter (where user_categories.affinity is not null and ranked_items.category_rank <= {{ pool_size }})
            as category_positions,
        count(*) filter (where user_categories.affinity = 1 and ranked_items.category_rank <= {{ pool_size }})
            as skipped_1,
        count(*) filter (where user_categories.affinity = 2 and ranked_items.category_rank <= {{ pool_size }})
            as skipped_2,
        count(*) filter (where user_categories.affinity = 3 and ranked_items.category_rank <= {{ pool_size }})
            as skipped_3,
        list(ranked_items.global_rank) filter (where ranked_items.global_rank <= {{ pool_size }}) as global_positions

    from skipped
    inner join ranked_items on skipped.item_id = ranked_items.item_id
    left join pool_categories on ranked_items.category = pool_categories.category
    left join user_categories
        on skipped.user_id = user_categories.user_id and ranked_items.category = user_categories.category
    where ranked_items.category_rank <= {{ pool_size }} or ranked_items.global_rank <= {{ pool_size }}
    group by skipped.user_id

),

-- one row per active user: co-visited items, and per top category (by affinity) where its pool
-- starts, how many items it has and how many of them the user skips
active_users as (

    select
        user_id,
        coalesce(any_value(covisitation.items), []) as covisitation_items,
        list(user_categories.category order by user_categories.affinity)
            filter (where user_categories.category is not null) as categories,
        list({
            'start': pool_categories.category_index * {{ pool_size }},
            'size': pool_categories.size,
            'affinity': user_categories.affinity
        } order by user_categories.affinity) filter (where user_categories.category is not null) as pools

    from (select distinct user_id from window_events) as users
    left join covisitation using (user_id)
    left join user_categories using (user_id)
    left join pool_categories using (category)
    group by user_id

),

user_state as (

    select
        active_users.user_id,
        active_users.covisitation_items,
        coalesce(active_users.categories, []) as categories,
        coalesce(active_users.pools, []) as pools,
        greatest(cast(ceil(({{ per_user }} - len(active_users.covisitation_items))
            / greatest(len(coalesce(active_users.categories, [])), 1)) as bigint), 0) as share,
        [coalesce(user_skips.skipped_1, 0), coalesce(user_skips.skipped_2, 0), coalesce(user_skips.skipped_3, 0)]
            as skipped_per_category,
        coalesce(user_skips.category_positions, []) as category_skips,
        coalesce(user_skips.global_positions, []) as global_skips

    from active_users
    left join user_skips on active_users.user_id = user_skips.user_id

),

-- each top category's share of the slots left after co-visitation: its best items the user does
-- not skip, cut from a range widened by the number of skipped items of that category
with_categories as (

    select
        user_state.user_id,
        user_state.covisitation_items,
        user_state.categories,
        user_state.global_skips,
        list_transform(
            flatten(list_transform(
                user_state.pools,
                lambda pool: list_filter(
                    range(pool.start + 1,
                          pool.start + 1 + least(share + skipped_per_category[pool.affinity], pool.size)),
                    lambda position: not list_contains(category_skips, position)
                )[1:share]
            )),
            lambda position: category_pool.items[position]
        ) as category_items

    from user_state
    cross join category_pool

),

-- globally popular items of the user's other categories, only for users with slots left
with_global as (

    select
        with_categories.*,
        case
            when len(covisitation_items) + len(category_items) < {{ per_user }} then
                list_transform(
                    list_filter(
                        range(1, len(global_pool.items) + 1),
                        lambda position:
                            not list_contains(with_categories.categories, global_pool.categories[position])
                            and not list_contains(global_skips, position)
                    )[1:{{ per_user }} - len(covisitation_items) - len(category_items)],
                    lambda position: global_pool.items[position]
                )
            else []
        end as global_items

    from with_categories
    cross join global_pool

),

active as (

    select
        user_id,
        list_concat(covisitation_items, category_items, global_items)[1:{{ per_user }}] as item_ids,
        len(covisitation_items) as n_covisitation,
        least(len(category_items), {{ per_user }} - len(covisitation_items)) as n_category_popular,
        false as is_cold_start

    from with_global

),

-- users with a profile snapshot in the window and no behaviour up to ds
cold_start as (

    select
        users.user_id,
        global_pool.items[1:{{ per_user }}] as item_ids,
        0 as n_covisitation,
        0 as n_category_popular,
        true as is_cold_start

    from {{ ref('int_user_profiles') }} as users
    anti join (select distinct user_id from events) as known on users.user_id = known.user_id
    cross join global_pool
    where users.ds = {{ ds() }}
        and users.snapshot_ds > {{ ds() }} - {{ int_var('candidate_window_days') }}
        {{- bucket_filter('users.user_id', bucket, buckets) }}

),

final as (

    select
        {{ ds() }} as ds,
        user_id,
        cast(item_ids as bigint[]) as item_ids,
        cast(n_covisitation as integer) as n_covisitation,
        cast(n_category_popular as integer) as n_category_popular,
        cast(len(item_ids) - n_covisitation - n_category_popular as integer) as n_global_popular,
        is_cold_start

    from (select * from active union all select * from cold_start)
    where len(item_ids) > 0

)

select * from final

{%- endmacro %}
