-- One row per (ds, user, candidate item): the pair view of marts.scoring_candidate_lists that the
-- feature store reads (feature_store/retrieval.py). A view, so the ~C rows per user are produced
-- only when scoring reads one ds (the filter on ds reaches the list table before the unnest).
-- category is the item's catalogue category as of ds (marts.item_features of ds); candidate_source
-- follows from the item's position in the list (sources are stored in priority order).

{{ config(materialized='view') }}

with

lists as (

    select * from {{ ref('scoring_candidate_lists') }}

),

pairs as (

    select
        ds,
        user_id,
        n_covisitation,
        n_category_popular,
        is_cold_start,
        unnest(item_ids) as item_id,
        generate_subscripts(item_ids, 1) as position

    from lists

),

items as (

    select ds, item_id, category from {{ ref('item_features') }}

),

final as (

    select
        pairs.ds,
        pairs.user_id,
        pairs.item_id,
        items.category,
        case
            when pairs.is_cold_start then 'cold_start_popular'
            when pairs.position <= pairs.n_covisitation then 'covisitation'
            when pairs.position <= pairs.n_covisitation + pairs.n_category_popular then 'category_popular'
            else 'global_popular'
        end as candidate_source,
        cast(pairs.position as integer) as candidate_rank

    from pairs
    left join items on pairs.ds = items.ds and pairs.item_id = items.item_id

)

select * from final
