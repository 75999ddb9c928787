-- Every user's profile as of ds (staging.stg_users: the latest snapshot row with snapshot ds <= ds),
-- stored per ds. A table of its own so that the marts built in user buckets (training_example_lists,
-- scoring_candidate_lists) read a ds partition, filtered to the bucket in the scan, instead of re-ranking
-- every user's snapshot rows once per bucket (one 10M-event bucket of scoring_candidate_lists: 11.9 s on
-- the view, 9.7 s on a table, bench/README.md). Keyed by ds like the marts (delete+insert of ds): a
-- table holding only the last ds built would change when an older day is rerun.

{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='ds', on_schema_change='fail', full_refresh=false, pre_hook="{{ delete_ds_partition() }}") }}

select
    {{ ds() }} as ds,
    user_id,
    age,
    gender,
    occupation,
    city,
    snapshot_ds

from {{ ref('stg_users') }}
