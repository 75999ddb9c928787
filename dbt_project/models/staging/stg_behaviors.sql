-- Typed, deduplicated behaviours. A behaviour is identified by (user, item, behaviour, ts): the same line
-- landed twice (re-sent file, overlapping exports) counts once.

with

source as (

    select * from {{ source('raw', 'behaviors') }}

),

-- the stable surrogate key and the pipeline's column names
renamed as (

    select
        ds,
        md5(concat_ws('|', user_id, item_id, behavior, strftime(ts, '%Y-%m-%dT%H:%M:%S.%f'))) as event_id,
        user_id,
        item_id,
        behavior,
        ts as event_at,
        value,
        device,
        source_file,
        source_line

    from source

),

-- one row per event_id; the earliest landing (ds, file, line) wins so the choice is deterministic
deduplicated as (

    select * from renamed
    qualify row_number() over (partition by event_id order by ds, source_file, source_line) = 1

),

final as (

    select
        ds,
        event_id,
        user_id,
        item_id,
        behavior,
        event_at,
        value,
        device

    from deduplicated

)

select * from final
