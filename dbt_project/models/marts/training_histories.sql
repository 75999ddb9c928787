-- History of every positive of ds, stored ONCE per positive (marts.training_examples holds the positive
-- and its negatives, each row pointing here by event_id). Every behaviour of ds is a positive whose
-- history is the user's last history_max_len behaviours STRICTLY before it (event_at earlier than the
-- event's; events at the same instant are not history), oldest first. Alongside the history:
--   - neg_item_id_history / neg_category_history (DIEN's auxiliary loss): per history position one item
--     the user never touched up to the end of ds, drawn uniformly and reproducibly for that event;
--   - session_item_ids / session_category_ids (DSIN): the last dsin_max_sessions sessions of the
--     behaviours strictly before the event (the event's own session so far counts), oldest first, each
--     cut to its most recent dsin_session_len behaviours.
-- Why a table of its own: the lists are most of the bytes, and negatives_per_positive + 1 copies of
-- them per positive made the examples mart several times slower to write and to read.
--
-- Cost: everything is bounded by the events of ds plus, per active user, the last history_max_len
-- events and the tails of the last dsin_max_sessions sessions before ds; no window over the whole history.
--
-- Built in user buckets (macros/user_buckets.sql): one per history_bucket_events events of ds, so the
-- per-user lists of a 10M-event day are never all in memory at once; the rows do not depend on the
-- bucket count. The query is macros/training_histories_query.sql.

{{ config(post_hook="{{ insert_user_buckets(training_histories_query, 'history_bucket_events') }}") }}

{{ training_histories_query(0, user_buckets('history_bucket_events')) }}
