-- The item catalogue as of ds: each item's latest snapshot row with snapshot ds <= ds (point in time).

with

snapshots as (

    select * from {{ ref('stg_item_snapshots') }}

),

as_of_ds as (

    select * from snapshots
    where snapshot_ds <= {{ ds() }}
    qualify row_number() over (partition by item_id order by snapshot_ds desc) = 1

),

final as (

    select
        item_id,
        category,
        brand,
        price,
        title,
        snapshot_ds

    from as_of_ds

)

select * from final
