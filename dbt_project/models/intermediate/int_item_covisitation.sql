-- Item-to-item co-visitation over the last candidate_window_days up to ds: for every item, its
-- covisitation_neighbours most co-visited other items (sessions of the window in which both occur,
-- ties by neighbour_id), with that count. marts.scoring_candidate_lists ranks a user's candidates by
-- the summed counts of the neighbours of the user's most recent items.
--
-- Why a table of its own: the session self-join is global (any user's session counts for an item), so
-- it cannot be split by user like the list mart; inside that mart it ran out of DuckDB's 3GB limit at
-- 10M events/day. Here it is built in item buckets (macros/user_buckets.sql: hash(item_id) % n, one
-- per covisitation_bucket_events events in the window): an item's neighbours depend only on the
-- sessions that contain it, so the rows do not depend on n. Incremental by ds like the marts
-- (delete+insert of ds, then buckets 1 .. n-1 appended), so reruns of older days leave newer ones intact.

{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='ds', on_schema_change='fail', full_refresh=false,
          pre_hook="{{ delete_ds_partition() }}",
          post_hook="{{ insert_buckets(item_covisitation_query, covisitation_buckets()) }}") }}

{{ item_covisitation_query(0, covisitation_buckets()) }}
