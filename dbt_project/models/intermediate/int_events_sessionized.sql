-- Every behaviour up to the end of ds, numbered per user and split into sessions (dbt-labs' segment
-- sessionization pattern): a gap longer than session_gap_minutes starts a new session; exactly that gap
-- stays in the session. Events are ordered per user by (event_at, item_id, behavior), a total order
-- because the three plus user_id are the event's identity.
--
-- Incremental by ds: a run sessionizes only the days after the last ds already built (normally just
-- ds) and continues each user's numbering from the state at the end of that day, so a daily run reads
-- one day of events plus the last built event of each user with new events (users without new events
-- are not re-read). Rerunning ds recomputes ds from the same state and gives the same rows. If the raw
-- data of a past day changes, rebuild with `dbt build --full-refresh`. The pre-hook records which days
-- the run rebuilt (macros/rebuilt_days.sql), and the tests in _intermediate.yml read only those days.

{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='ds',
        on_schema_change='fail',
        pre_hook=[
            "{{ record_rebuilt_days() }}",
            "{{ delete_ds_partition() }}"
        ]
    )
}}

with

events as (

    select * from {{ ref('stg_behaviors') }}

),

item_snapshots as (

    select * from {{ ref('stg_item_snapshots') }}

),

{% if is_incremental() %}

{#- the last day built before ds (macros/last_built_ds.sql): a literal, so it prunes the scans of raw
    behaviours and of this table (zone maps on ds) instead of filtering every row -#}
{% set built_until = last_built_ds(this) or '1900-01-01' %}

{% endif %}

new_events as (

    select * from events
    where ds <= {{ ds() }}
    {% if is_incremental() %}
        -- days after the last built one are (re)built now, so a skipped day is caught up, never lost
        and ds > date '{{ built_until }}'
    {% endif %}

),

{% if is_incremental() %}

-- each user with new events: position at the end of the built days; numbering continues from here
prior_state as (

    select
        user_id,
        max(event_number) as last_event_number,
        arg_max(event_at, event_number) as last_event_at,
        arg_max(session_number, event_number) as last_session_number

    from {{ this }}
    where ds <= date '{{ built_until }}'
        and user_id in (select user_id from new_events)
    group by user_id

),

{% endif %}

-- the item's category as of the event's own ds (latest snapshot on or before it): point in time, and
-- independent of which day's run processed the event
categorized as (

    select
        new_events.*,
        item_snapshots.category

    from new_events
    asof left join item_snapshots
        on new_events.item_id = item_snapshots.item_id
        and new_events.ds >= item_snapshots.snapshot_ds

),

-- position among the new events and the time of the user's previous new event
ordered as (

    select
        *,
        row_number() over user_events as batch_event_number,
        lag(event_at) over user_events as previous_batch_event_at

    from categorized
    window user_events as (partition by user_id order by event_at, item_id, behavior)

),

-- the first new event of a user compares against the user's last built event
with_prior_state as (

    select
        ordered.*,
        {% if is_incremental() %}
            coalesce(ordered.previous_batch_event_at, prior_state.last_event_at) as previous_event_at,
            coalesce(prior_state.last_session_number, 0) as base_session_number,
            coalesce(prior_state.last_event_number, 0) as base_event_number
        {% else %}
            ordered.previous_batch_event_at as previous_event_at,
            0 as base_session_number,
            0 as base_event_number
        {% endif %}

    from ordered
    {% if is_incremental() %}
        left join prior_state on ordered.user_id = prior_state.user_id
    {% endif %}

),

flagged as (

    select
        *,
        case
            when previous_event_at is null then 1
            when event_at - previous_event_at > to_minutes({{ int_var('session_gap_minutes') }}) then 1
            else 0
        end as is_new_session

    from with_prior_state

),

numbered as (

    select
        *,
        base_event_number + batch_event_number as event_number,
        base_session_number + sum(is_new_session) over (
            partition by user_id order by batch_event_number rows between unbounded preceding and current row
        ) as session_number

    from flagged

),

final as (

    select
        ds,
        event_id,
        user_id,
        item_id,
        category,
        behavior,
        event_at,
        value,
        device,
        md5(concat_ws('|', user_id, session_number)) as session_id,
        cast(session_number as integer) as session_number,
        cast(event_number as bigint) as event_number

    from numbered

)

select * from final
