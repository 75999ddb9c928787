-- The point-in-time sequences of every positive of ds, stored ONCE PER USER: the user's window of
-- behaviours (the events of ds plus what their histories and sessions reach before ds), oldest first,
-- as parallel lists, and the user's positives (every behaviour of ds) with, for each, how many window
-- events lie strictly before it (`events_before`: events at the same instant are not history).
-- marts.training_histories is the one-row-per-positive view of this table: a positive's history is the
-- window slice (events_before - history_max_len, events_before], its DSIN sessions are slices of the
-- window between session_starts and session_ends.
--   - neg_item_ids / neg_categories (DIEN's auxiliary loss): per window position one item the user
--     never touched up to the end of ds, drawn uniformly and reproducibly for that event;
--   - session_ranks: the window event's session, numbered 1, 2, ... within the window;
--     session_starts / session_ends: the first and last window position of each of those sessions.
--
-- Why per user: a user's positives share almost all of their histories (each is the previous one
-- plus an event), so storing a list per positive wrote each event up to history_max_len times. At
-- 10M events/day that write was most of the dbt build (one 1/7 bucket: 28 s as per-positive lists,
-- 10 s as this table); slicing the view back out costs ~2 s per bucket when a reader asks for it.
--
-- Cost: everything is bounded by the events of ds plus, per active user, the last history_max_len
-- events and the tails of the last dsin_max_sessions sessions before ds; no window over the whole
-- history. Built in user buckets (macros/user_buckets.sql): one per history_bucket_events events of
-- ds; the rows do not depend on the bucket count. The query is macros/training_sequences_query.sql.

{{ config(post_hook="{{ insert_user_buckets(training_sequences_query, 'history_bucket_events') }}") }}

{{ training_sequences_query(0, user_buckets('history_bucket_events')) }}
