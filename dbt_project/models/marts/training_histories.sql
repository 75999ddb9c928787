-- History of every positive of ds, ONE ROW PER POSITIVE (marts.training_examples holds the positive
-- and its negatives, each row pointing here by event_id): the one-row-per-positive view of
-- marts.training_sequences that the feature store and the GX suite read (the leakage test checks the
-- stored windows; models/marts/_unit_tests.yml pins this slicing). Every
-- behaviour of ds is a positive whose history is the user's last history_max_len behaviours STRICTLY
-- before it (event_at earlier than the event's; events at the same instant are not history), oldest
-- first. Alongside the history:
--   - neg_item_id_history / neg_category_history (DIEN's auxiliary loss): per history position one item
--     the user never touched up to the end of ds, drawn uniformly and reproducibly for that event;
--   - session_item_ids / session_category_ids (DSIN): the last dsin_max_sessions sessions of the
--     behaviours strictly before the event (the event's own session so far counts), oldest first, each
--     cut to its most recent dsin_session_len behaviours.
-- A view, so the per-positive copies of the lists exist only while a reader reads one ds (the filter on
-- ds reaches the sequence table before the unnest).

{{ config(materialized='view') }}

{% set max_len = int_var('history_max_len') %}
{% set max_sessions = int_var('dsin_max_sessions') %}
{% set session_len = int_var('dsin_session_len') %}

with

positives as (

    select
        * exclude (event_ids, event_ats, events_before),
        unnest(event_ids) as event_id,
        unnest(event_ats) as event_at,
        unnest(events_before) as events_before

    from {{ ref('training_sequences') }}

),

slices as (

    select
        *,
        greatest(events_before - {{ max_len }}, 0) + 1 as history_start,
        -- the session of the last event before the positive, and the session ranks to take
        coalesce(session_ranks[events_before], 0) as last_rank,
        range(greatest(last_rank - {{ max_sessions }} + 1, 1), last_rank + 1) as session_ranks_taken,
        -- each taken session's cut: it ends at the session's last event, or for the latest one at the last
        -- event before the positive, and keeps at most session_len events
        list_transform(session_ranks_taken, lambda r: {
            'first': greatest(session_starts[r],
                              (case when r = last_rank then events_before else session_ends[r] end)
                              - {{ session_len }} + 1),
            'last': case when r = last_rank then events_before else session_ends[r] end
        }) as session_cuts

    from positives

),

final as (

    select
        ds,
        event_id,
        user_id,
        event_at,
        list_slice(item_ids, history_start, events_before) as item_id_history,
        list_slice(categories, history_start, events_before) as category_history,
        list_slice(behaviors, history_start, events_before) as behavior_history,
        list_slice(session_numbers, history_start, events_before) as session_number_history,
        cast(least(events_before, {{ max_len }}) as integer) as history_length,
        list_slice(neg_item_ids, history_start, events_before) as neg_item_id_history,
        list_slice(neg_categories, history_start, events_before) as neg_category_history,
        list_transform(session_cuts, lambda c: list_slice(item_ids, c.first, c.last)) as session_item_ids,
        list_transform(session_cuts, lambda c: list_slice(categories, c.first, c.last)) as session_category_ids

    from slices

)

select * from final
