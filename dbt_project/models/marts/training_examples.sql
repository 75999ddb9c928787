-- Training examples of ds, ONE ROW PER EXAMPLE, as training and the GX suite read them, from
-- marts.training_example_lists (one row per positive, its negatives as lists): the positive (label 1,
-- example_id = its event_id), then its k-th negative (label 0, example_id '<event_id>-n<k>'), sharing
-- the positive's context. A view: stored, the repeated context was most of the write of the examples,
-- and the unique example_id string alone 26% of the warehouse's used blocks after two days of 10M events
-- (bench/README.md).

{{ config(materialized='view') }}

with

-- not materialized: each branch scans only the columns and days its reader asks for (a materialized CTE
-- would copy every column of every filtered row first)
lists as not materialized (

    select * from {{ ref('training_example_lists') }}

),

negatives as (

    select
        * exclude (item_id, category, negative_items, negative_categories, negative_samplers),
        generate_subscripts(negative_items, 1) as negative_number,
        unnest(negative_items) as item_id,
        unnest(negative_categories) as category,
        unnest(negative_samplers) as negative_sampler

    from lists

),

examples as (

    select
        ds, event_id as example_id, event_id, user_id, item_id, category, 1 as label,
        cast(null as varchar) as negative_sampler, event_at, age, gender, occupation, city, hour, weekday, device

    from lists

    union all

    select
        ds, event_id || '-n' || negative_number, event_id, user_id, item_id, category, 0,
        negative_sampler, event_at, age, gender, occupation, city, hour, weekday, device

    from negatives

)

select
    ds,
    example_id,
    event_id,
    user_id,
    item_id,
    category,
    cast(label as integer) as label,
    negative_sampler,
    event_at,
    age,
    gender,
    occupation,
    city,
    hour,
    weekday,
    device

from examples
