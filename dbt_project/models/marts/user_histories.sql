-- Each user's most recent behaviours as of the end of ds (what scoring for ds + 1 attends over):
-- the last history_max_len events, oldest first, as parallel lists; and DSIN's sessions: the last
-- dsin_max_sessions sessions (oldest first), each cut to its most recent dsin_session_len behaviours.
--
-- Carried forward, not rebuilt from every event: a day's rows are the last partition built before ds
-- (normally ds - 1) with the events after it appended. A user without new events keeps that row; a user
-- with new events gets the carried lists plus the new events, cut to the last history_max_len (and the
-- sessions: a session running on from the carried row continues its tail). So a daily build reads the
-- day's events and one partition, not every user's whole history: that aggregate grew with every day kept.
-- A partition is carried only when its history_spec (the cut: history_max_len, dsin_max_sessions,
-- dsin_session_len) is the run's own; otherwise, on the first build, on --full-refresh (events
-- renumbered from raw) and with history_max_len 0, the rows are built from every event up to ds. Either
-- way the rows are the same (tests/data/test_dbt.py builds both).
--
-- Built in user buckets (macros/user_buckets.sql, one per history_bucket_events events of ds): at 10M
-- events/day the single query ran out of DuckDB's memory limit on the second day. The rows do not depend
-- on the bucket count. The query is macros/user_histories_query.sql.

{{ config(post_hook="{{ insert_user_buckets(user_histories_query, 'history_bucket_events') }}") }}

{{ user_histories_query(0, user_buckets('history_bucket_events')) }}
