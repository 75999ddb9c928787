-- Candidates to rank for ds + 1: ONE ROW PER USER with the candidate item ids as a list, in source
-- priority order, at most candidates_per_user (C) of them.
--
-- Who: every user with a behaviour in the last candidate_window_days up to ds, plus cold-start users
-- (a user profile snapshot in the window but no behaviour up to ds).
-- Sources, in priority order (a (user, item) pair appears once, under its first source):
--   1. covisitation      items seen in the same sessions (window) as the user's covisitation_seeds
--                        most recent distinct items; each item keeps its covisitation_neighbours most
--                        co-visited items; ranked by summed co-visit count
--   2. category_popular  the window's most popular items of the user's top-3 categories (by the user's
--                        events in the window), the remaining slots split evenly between them
--   3. global_popular    the window's most popular items of the other categories (fills what is left)
--   cold_start_popular   cold-start users: the global list (they have no categories or history)
-- Items the user ever touched (up to ds) are excluded unless candidates_include_touched is true.
--
-- Why lists: with ~166k active users x 200 candidates a row per pair is 33M rows that have to be
-- deduplicated, ranked and stored daily (the old model took most of an 18 GB / 290 s dbt build).
-- Category and global pools are shared lists (one per category); a user only adds a short list of
-- the pool positions to skip (touched or already co-visited), so the heavy per-pair joins disappear.
-- `marts.scoring_candidates` is the one-row-per-pair view of this table that consumers read.
--
-- Scale: the two global parts are intermediate tables built first, intermediate.int_item_popularity
-- (window popularity ranks, from which the pools are cut) and intermediate.int_item_covisitation (each
-- item's top neighbours; its session self-join ran out of DuckDB's 3GB limit at 10M events/day when it
-- was part of this query). Everything else depends on the user's own events, so the list is built in
-- user buckets (macros/user_buckets.sql, one per candidate_bucket_events events of ds); the rows do not
-- depend on the bucket count. The query is macros/scoring_candidate_lists_query.sql.

{{ config(post_hook="{{ insert_user_buckets(scoring_candidate_lists_query, 'candidate_bucket_events') }}") }}

{{ scoring_candidate_lists_query(0, user_buckets('candidate_bucket_events')) }}

