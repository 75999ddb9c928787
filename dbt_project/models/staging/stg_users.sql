-- User profiles as of ds: each user's latest snapshot row with snapshot ds <= ds (point in time).
-- Within one snapshot the last landed row of a user wins.

with

source as (

    select * from {{ source('raw', 'users') }}

),

as_of_ds as (

    select * from source
    where ds <= {{ ds() }}
    qualify row_number() over (
        partition by user_id order by ds desc, source_file desc, source_line desc
    ) = 1

),

final as (

    select
        user_id,
        age,
        gender,
        occupation,
        city,
        ds as snapshot_ds

    from as_of_ds

)

select * from final
