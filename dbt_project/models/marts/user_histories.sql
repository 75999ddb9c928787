-- Each user's most recent behaviours as of the end of ds (what scoring for ds + 1 attends over):
-- the last history_max_len events, oldest first, as parallel lists; and DSIN's sessions: the last
-- dsin_max_sessions sessions (oldest first), each cut to its most recent dsin_session_len behaviours.
--
-- Built in user buckets (macros/user_buckets.sql, one per history_bucket_events events of ds): at 10M
-- events/day the single query ran out of DuckDB's memory limit on the second day. The rows do not depend
-- on the bucket count. The query is macros/user_histories_query.sql.

{{ config(post_hook="{{ insert_user_buckets(user_histories_query, 'history_bucket_events') }}") }}

{{ user_histories_query(0, user_buckets('history_bucket_events')) }}
