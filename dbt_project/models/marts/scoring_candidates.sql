-- Candidates to rank for ds + 1, for every user active in the last candidate_window_days up to ds:
-- the window's most popular items in the user's top-3 categories ('category_popular'), then globally
-- popular items ('global_popular'). Items the user already touched are excluded; a (user, item) pair
-- appears once, under the first source by priority; at most candidates_per_user per user.

{% set per_user = int_var('candidates_per_user') %}

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}

),

catalogue as (

    select * from {{ ref('stg_items') }}

),

window_events as (

    select
        events.user_id,
        events.item_id,
        catalogue.category

    from events
    -- categories as of ds, the same ones the scored rows carry
    left join catalogue on events.item_id = catalogue.item_id
    where events.ds > {{ ds() }} - {{ int_var('candidate_window_days') }}

),

active_users as (

    select distinct user_id from window_events

),

touched as (

    select distinct user_id, item_id from events

),

touched_counts as (

    select user_id, count(*) as touched_items from touched group by user_id

),

-- enough popular items that, after removing what a user touched, per_user remain
item_popularity as (

    select
        item_id,
        any_value(category) as category,
        count(*) as events_in_window

    from window_events
    group by item_id

),

ranked_items as (

    select
        *,
        row_number() over (order by events_in_window desc, item_id) as global_rank,
        row_number() over (partition by category order by events_in_window desc, item_id) as category_rank

    from item_popularity

),

most_touched as (

    select coalesce(max(touched_items), 0) as max_touched from touched_counts

),

user_top_categories as (

    select user_id, category
    from window_events
    where category is not null
    group by user_id, category
    qualify row_number() over (partition by user_id order by count(*) desc, category) <= 3

),

category_popular as (

    select
        user_top_categories.user_id,
        ranked_items.item_id,
        ranked_items.category,
        'category_popular' as candidate_source,
        1 as source_priority,
        ranked_items.global_rank as source_rank

    from user_top_categories
    inner join ranked_items on user_top_categories.category = ranked_items.category
    where ranked_items.category_rank <= {{ per_user }} + (select max_touched from most_touched)

),

global_popular as (

    select
        active_users.user_id,
        ranked_items.item_id,
        ranked_items.category,
        'global_popular' as candidate_source,
        2 as source_priority,
        ranked_items.global_rank as source_rank

    from active_users
    cross join ranked_items
    where ranked_items.global_rank <= {{ per_user }} + (select max_touched from most_touched)

),

untouched as (

    select * from (
        select * from category_popular
        union all
        select * from global_popular
    ) as candidates
    anti join touched
        on touched.user_id = candidates.user_id and touched.item_id = candidates.item_id

),

-- one row per (user, item): the first source by priority
deduplicated as (

    select * from untouched
    qualify row_number() over (partition by user_id, item_id order by source_priority) = 1

),

capped as (

    select * from deduplicated
    qualify row_number() over (partition by user_id order by source_priority, source_rank, item_id)
        <= {{ per_user }}

),

final as (

    select
        {{ ds() }} as ds,
        user_id,
        item_id,
        category,
        candidate_source

    from capped

)

select * from final
