-- Training examples of ds as stored, one row per example, keyed by (event_id, negative_number);
-- marts.training_examples is the view that readers use (it adds example_id). Every behaviour of ds is
-- a positive (label 1, negative_number 0), and each positive gets negatives_per_positive negatives
-- (label 0, negative_number 1, 2, ...) sharing its context:
-- popularity_negatives_per_positive of them drawn with weight events_30d ** popularity_exponent
-- (marts.item_features), the rest uniformly over the items of ds; never an item the user touched up to
-- the end of ds, never twice for one positive. Draws are seeded (negative_seed) and reproducible.
--
-- The point-in-time histories, DIEN negative histories and DSIN sessions are NOT here: they are stored
-- once per user in marts.training_sequences and read per positive through the view
-- marts.training_histories, keyed by (ds, event_id); every example carries the
-- event_id of its positive (a positive's own event_id for label 1), so the feature store gathers them
-- by that key instead of reading the same lists negatives_per_positive + 1 times.
--
-- Built in user buckets (macros/user_buckets.sql, one per history_bucket_events events of ds, as
-- training_sequences): a positive's negatives depend only on its own event and its user's touched items
-- (plus the item pools of ds), so the rows do not depend on the bucket count. The query, and how the
-- negatives are picked per positive from lists of draws, is macros/training_examples_query.sql.

{{ config(post_hook="{{ insert_user_buckets(training_examples_query, 'history_bucket_events') }}") }}

{{ training_examples_query(0, user_buckets('history_bucket_events')) }}
