-- What the leakage test (tests/assert_no_history_leakage.sql) reports: per ds, one row per failed check
-- (example_id: the positive's event_id, or the user for a window-level check; check_name), none when
-- every positive's history, sessions, DIEN negatives and example links are point-in-time correct. The
-- checks and how they are reconstructed from the timeline are macros/history_leakage_query.sql.
--
-- Why a table built in user buckets and not the test's own query: at 10M events/day the single query
-- needed 4.1 GB of buffers (and 2 GB spilled) and ran out of DuckDB's 3GB limit on day 2; as one UNION ALL
-- of 7 bucket queries it still peaked at the limit (the branches run at once). Here each bucket is its own
-- statement (macros/user_buckets.sql, one per history_bucket_events events of ds): a user's checks read
-- only that user's rows, so the failures do not depend on the bucket count. Incremental by ds
-- (delete+insert of ds), like the marts.

{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='ds',
        on_schema_change='fail',
        full_refresh=false,
        pre_hook="{{ delete_ds_partition() }}",
        post_hook="{{ insert_user_buckets(history_leakage_query, 'history_bucket_events') }}"
    )
}}

{{ history_leakage_query(0, user_buckets('history_bucket_events')) }}
