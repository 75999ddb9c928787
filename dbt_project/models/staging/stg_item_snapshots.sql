-- One catalogue row per (item, snapshot ds): the history of every item's attributes, for point-in-time
-- (as-of) joins. Within one snapshot the last landed row of an item wins.

with

source as (

    select * from {{ source('raw', 'items') }}

),

latest_in_snapshot as (

    select * from source
    qualify row_number() over (
        partition by item_id, ds order by source_file desc, source_line desc
    ) = 1

),

final as (

    select
        ds as snapshot_ds,
        item_id,
        category,
        brand,
        price,
        title

    from latest_in_snapshot

)

select * from final
