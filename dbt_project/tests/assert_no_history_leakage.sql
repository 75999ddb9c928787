-- Point in time: every positive of ds carries exactly the user's last history_max_len behaviours STRICTLY
-- before its event_at, oldest first; DSIN sessions built from those earlier behaviours only (the last
-- dsin_max_sessions sessions, each its last dsin_session_len behaviours, the current one cut at the last
-- earlier event); DIEN negatives never an item the user touched up to ds. Anything at or after event_at
-- (or stale, misaligned or missing) is a failure.
--
-- What is checked is what is stored: marts.training_sequences, one window of behaviours per user, from
-- which the view marts.training_histories slices each positive's lists (its slicing is pinned by the
-- dbt unit tests in models/marts/_marts.yml and by tests/data/test_dbt.py). Checking the window costs
-- O(window) instead of O(positives x history length): at 10M events/day the element-by-element check of
-- every positive's lists joined ~160M history elements and read the view several times (~100 s).
--
-- Reconstructed independently of the models from the user's timeline, looked up by position:
-- int_events_sessionized.event_number is the event's position in the user's whole timeline (1, 2, ... in
-- (event_at, item_id, behavior) order; assert_events_numbered_in_time_order checks that for every ds).
-- So the events strictly before a positive are n = (the first event number at its instant) - 1, and the
-- events a window names are found by number; only the window's sessions are read from the timeline,
-- never the users' whole histories (which grow every day: renumbering them here ran out of the 3GB
-- limit at 10M events/day). Then:
--   window      every window element is the timeline event its event_number names (item, behaviour,
--               category, session), event numbers strictly increase along the window, session ranks
--               number the window's sessions 1, 2, ... and session_starts / session_ends bound them,
--               the lists are aligned, no DIEN negative was touched (any event up to ds);
--   history     a positive's last earlier window element is event n, which is at an earlier instant
--               than the positive, and the min(n, max_len) elements before it are events
--               n - min(n, max_len) + 1 .. n, so the slice is exactly those events;
--   sessions    the window holds the min(max_sessions, last earlier session) most recent sessions, and
--               of each the positive takes, the events from its cut start to its cut end;
--   examples    every positive of training_example_lists (the examples of the view training_examples
--               carry its event_id) points at its history row,
--               with the same user and event_at, and every history row has its positive example.
--
-- The check runs per user bucket into intermediate.int_history_leakage_failures (one statement per
-- bucket; as one query it ran out of memory at 10M events/day); the query is
-- macros/history_leakage_query.sql. This test fails on any of its rows for ds.

select example_id, check_name
from {{ ref('int_history_leakage_failures') }}
where ds = {{ ds() }}
