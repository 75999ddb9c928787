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

-- one row per event_id; the earliest landing (file, line) wins so the choice is deterministic. An event
-- can only land in the ds of its ts (ingest rejects the rest), so deduplicating within ds is complete, and
-- partitioning by ds lets a reader's ds filter reach the scan instead of hashing every day's rows on
-- every run. (Were the ingest time zone changed between days, a cross-day copy would fail the unique
-- test on intermediate.int_events_sessionized.event_id, not pass silently.)
deduplicated as (

    select * from renamed
    qualify row_number() over (partition by ds, event_id order by source_file, source_line) = 1

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
