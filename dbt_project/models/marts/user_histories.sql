-- Each user's most recent behaviours as of the end of ds (what scoring for ds + 1 attends over):
-- the last history_max_len events, oldest first, as parallel lists.

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}

),

-- the last N events of every user
recent as (

    select * from events
    qualify row_number() over (partition by user_id order by event_number desc)
        <= {{ int_var('history_max_len') }}

),

final as (

    select
        {{ ds() }} as ds,
        user_id,
        list(item_id order by event_number) as item_id_history,
        list(category order by event_number) as category_history,
        list(behavior order by event_number) as behavior_history,
        list(event_at order by event_number) as event_at_history,
        list(session_number order by event_number) as session_number_history,
        cast(count(*) as integer) as history_length

    from recent
    group by user_id

)

select * from final
