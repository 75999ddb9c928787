-- Training examples of ds, ONE ROW PER EXAMPLE, as training and the GX suite read them: the rows of
-- marts.training_example_rows with their example_id, a positive's event_id and '<event_id>-n<k>' for
-- its k-th negative. A view because that id is a unique string per row: stored, it was 26% of the
-- warehouse's used blocks after two days of 10M events (bench/README.md), and writing one user bucket
-- without it took 8.4 s instead of 9.8-10.8 s.

{{ config(materialized='view') }}

select
    ds,
    case when negative_number = 0 then event_id else event_id || '-n' || negative_number end as example_id,
    event_id,
    user_id,
    item_id,
    category,
    label,
    negative_sampler,
    event_at,
    age,
    gender,
    occupation,
    city,
    hour,
    weekday,
    device

from {{ ref('training_example_rows') }}
