-- Training examples of ds as stored: ONE ROW PER POSITIVE, with its negatives as lists; readers use the
-- view marts.training_examples (one row per example, with example_id). Every behaviour of ds is a
-- positive, and it gets negatives_per_positive negatives (negative_items, negative_categories,
-- negative_samplers, in draw order: the view's negative k is element k) sharing its context:
-- popularity_negatives_per_positive of them drawn with weight events_30d ** popularity_exponent
-- (marts.item_features), the rest uniformly over the items of ds; never an item the user touched up to
-- the end of ds, never twice for one positive. Draws are seeded (negative_seed) and reproducible.
--
-- Why lists: a positive's negatives share everything but the item (event, user, time, profile,
-- context). Stored one row per example, that context was written negatives_per_positive + 1 times: at
-- 10M events/day writing one 1/7 user bucket took 8.7-9.0 s as rows, 6.6-6.7 s as this table
-- (bench/README.md), and the key test checks one event_id per positive instead of (event_id, k) pairs.
--
-- The point-in-time histories, DIEN negative histories and DSIN sessions are NOT here: they are stored
-- once per user in marts.training_sequences and read per positive through the view
-- marts.training_histories, keyed by (ds, event_id), the key of this table too; the feature store
-- gathers them by that key instead of reading the same lists once per example.
--
-- Built in user buckets (macros/user_buckets.sql, one per history_bucket_events events of ds, as
-- training_sequences): a positive's negatives depend only on its own event and its user's touched items
-- (plus the item pools of ds), so the rows do not depend on the bucket count. The query, and how the
-- negatives are picked per positive from lists of draws, is macros/training_examples_query.sql.

{{ config(post_hook="{{ insert_user_buckets(training_examples_query, 'history_bucket_events') }}") }}

{{ training_examples_query(0, user_buckets('history_bucket_events')) }}
