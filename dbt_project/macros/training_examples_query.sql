{#-
    The query of marts.training_example_lists for one bucket of users (macros/user_buckets.sql); the model
    documents what the rows are. Everything is per positive (hence per user) except the item pools.

    Negatives are picked per positive from a LIST of its draws (draw number k = list position), so no
    operator ever holds one row per (positive, draw): the uniform draws are computed in the list
    (pool position = rand31 % pool size, looked up in the pool as one list), touched items are a list
    per user, and the pick (untouched, not drawn before, not excluded, first `count`) is a list filter.
    The row-per-draw version needed three hash aggregates and two windows over ~5 rows per positive,
    most of the mart's time at 1M events/day (and 503 s of the first day at 10M events/day).
-#}
{% macro training_examples_query(bucket, buckets) -%}

{% set n_negatives = int_var('negatives_per_positive') | int %}
{% set n_popular = int_var('popularity_negatives_per_positive') | int %}
{% if n_popular > n_negatives %}
    {{ exceptions.raise_compiler_error("var popularity_negatives_per_positive (" ~ n_popular ~ ") must not exceed negatives_per_positive (" ~ n_negatives ~ ")") }}
{% endif %}
{% set n_uniform = n_negatives - n_popular %}

with

events as (

    select ds, event_id, user_id, item_id, category, event_at, device
    from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

-- profiles as of ds (intermediate.int_user_profiles: stg_users stored per ds), the bucket's users only
profiles as (

    select user_id, age, gender, occupation, city
    from {{ ref('int_user_profiles') }}
    where ds = {{ ds() }}{{ bucket_filter('user_id', bucket, buckets) }}

),

-- every behaviour of ds is a positive (the same events marts.training_histories keys its rows by).
-- pid: a dense integer id for this query only (the popularity lists join back on it)
positives as materialized (

    select
        *,
        {{ hex_key('event_id') }} as event_key,
        row_number() over () as pid

    from events
    where ds = {{ ds() }}

),

{{ item_pool_ctes() }}

-- the uniform pool as one list: a draw at pool_index p is element p + 1
uniform_pool as (

    select
        list(item_id order by pool_index) as pool_items,
        list(category order by pool_index) as pool_categories,
        count(*) as pool_count

    from item_pool

),

-- popularity-weighted pool: each item owns [cum_start, cum_start + weight) of the total weight
popular_pool as (

    select
        item_id,
        category,
        weight,
        sum(weight) over (order by item_id rows between unbounded preceding and current row) - weight
            as cum_start

    from (
        select item_id, category, pow(events_30d, {{ float_var('popularity_exponent') }}) as weight
        from {{ ref('item_features') }}
        where ds = {{ ds() }} and events_30d > 0
    )

),

popular_total as (

    select sum(weight) as weight_total from popular_pool

),

-- everything each user of ds touched up to the end of ds, as one list: never a negative
touched as (

    select user_id, list(item_id) as items
    from (
        select distinct events.user_id, events.item_id
        from events
        semi join (select distinct user_id from positives) as day_users on events.user_id = day_users.user_id
    )
    group by user_id

),

-- each positive with what its examples share (profile) and what its negatives must avoid (touched)
sources as (

    select
        positives.*,
        profiles.age,
        profiles.gender,
        profiles.occupation,
        profiles.city,
        touched.items as touched

    from positives
    inner join touched on positives.user_id = touched.user_id
    left join profiles on positives.user_id = profiles.user_id

),

{% if n_uniform > 0 %}
-- every column of sources plus the uniform negatives (items, categories) in draw order. One cross join
-- with the pool lists, carried through the steps below: each cross join copies the pool list once per
-- vector of rows, which at 400k items cost seconds per join.
uniform_negatives as (

    select
        * exclude (pool_items, pool_categories, pool_count, first_at, first_draws, draws_at, draws, picked),
        list_transform(picked, lambda i: draws[i]) as uniform_items,
        list_transform(picked, lambda i: pool_categories[draws_at[i]]) as uniform_categories

    from (
        select *, {{ pick_negatives('draws', n_uniform) }} as picked
        from (
            select *, list_transform(draws_at, lambda p: pool_items[p]) as draws
            from (
                -- the few positives the first draws leave short (touched items, repeats) draw on, up
                -- to draw 4 * n_uniform + 8
                select
                    *,
                    case when len({{ pick_negatives('first_draws', n_uniform) }}) < {{ n_uniform }}
                        then {{ uniform_draw_positions(0, 4 * n_uniform + 9) }}
                        else first_at
                    end as draws_at

                from (
                    select *, list_transform(first_at, lambda p: pool_items[p]) as first_draws
                    from (
                        -- pool positions of draws 0 .. n_uniform (draw k at list position k + 1)
                        select sources.*, uniform_pool.*, {{ uniform_draw_positions(0, n_uniform + 1) }} as first_at
                        from sources
                        cross join uniform_pool
                    )
                )
            )
        )
    )

),
{% endif %}

{% if n_popular > 0 %}
-- popularity: a draw is the item whose share of the total weight holds rand31 / 2^31 (an as-of join on
-- the cumulative weight), so draws are rows here, gathered into one list per positive in draw order
popularity_first as (

    {{ popularity_draw_lists(0, n_popular + 1, 'sources') }}

),

popularity_short as (

    select *
    from (
        select
            sources.pid,
            sources.event_key,
            sources.touched,
            coalesce(popularity_first.items, []) as first_draws
            {%- if n_uniform > 0 %},
            uniform_negatives.uniform_items as excluded
            {%- endif %}

        from sources
        left join popularity_first on popularity_first.pid = sources.pid
        {%- if n_uniform > 0 %}
        left join uniform_negatives on uniform_negatives.pid = sources.pid
        {%- endif %}
    )
    where len({{ pick_negatives('first_draws', n_popular, 'excluded' if n_uniform > 0 else none) }}) < {{ n_popular }}

),

popularity_retries as (

    {{ popularity_draw_lists(n_popular + 1, 4 * n_popular + 9, 'popularity_short') }}

),

popularity_negatives as (

    select
        pid,
        list_transform(picked, lambda i: draws[i]) as items,
        list_transform(picked, lambda i: draw_categories[i]) as categories

    from (
        select
            pid,
            draws,
            draw_categories,
            {{ pick_negatives('draws', n_popular, 'excluded' if n_uniform > 0 else none) }} as picked

        from (
            select
                sources.pid,
                sources.touched,
                {%- if n_uniform > 0 %}
                uniform_negatives.uniform_items as excluded,
                {%- endif %}
                list_concat(coalesce(popularity_first.items, []), coalesce(popularity_retries.items, [])) as draws,
                list_concat(coalesce(popularity_first.categories, []), coalesce(popularity_retries.categories, []))
                    as draw_categories

            from sources
            left join popularity_first on popularity_first.pid = sources.pid
            left join popularity_retries on popularity_retries.pid = sources.pid
            {%- if n_uniform > 0 %}
            left join uniform_negatives on uniform_negatives.pid = sources.pid
            {%- endif %}
        )
    )

),
{% endif %}

-- one row per positive; its negatives share its context (and, through event_id, its history), in
-- order: uniform by draw number, then popularity by draw number
contexts as (

    select
        base.* exclude (touched{{ ', uniform_items, uniform_categories' if n_uniform > 0 }}),
        list_concat(
            {%- if n_uniform > 0 %} base.uniform_items,{% endif %}
            {%- if n_popular > 0 %} coalesce(popularity_negatives.items, []),{% endif %}
            cast([] as bigint[])
        ) as negative_items,
        list_concat(
            {%- if n_uniform > 0 %} base.uniform_categories,{% endif %}
            {%- if n_popular > 0 %} coalesce(popularity_negatives.categories, []),{% endif %}
            cast([] as varchar[])
        ) as negative_categories,
        list_concat(
            {%- if n_uniform > 0 %} list_transform(base.uniform_items, lambda x: 'uniform'),{% endif %}
            {%- if n_popular > 0 %} list_transform(coalesce(popularity_negatives.items, []), lambda x: 'popularity'),{% endif %}
            cast([] as varchar[])
        ) as negative_samplers

    from {{ 'uniform_negatives' if n_uniform > 0 else 'sources' }} as base
    {%- if n_popular > 0 %}
    left join popularity_negatives on popularity_negatives.pid = base.pid
    {%- endif %}

),

final as (

    select
        {{ ds() }} as ds,
        event_id,
        user_id,
        item_id,
        category,
        event_at,
        age,
        gender,
        occupation,
        city,
        cast(hour(event_at) as integer) as hour,
        cast(isodow(event_at) as integer) as weekday,
        device,
        cast(negative_items as bigint[]) as negative_items,
        cast(negative_categories as varchar[]) as negative_categories,
        cast(negative_samplers as varchar[]) as negative_samplers

    from contexts

)

select * from final

{%- endmacro %}

{#-
    Pool positions (1-based) of the uniform draws k_from .. k_to - 1 of the row's event_key, as a list
    literal of one expression per draw (plain vectorised arithmetic; the same per-element expression in
    a lambda cost several times more).
-#}
{% macro uniform_draw_positions(k_from, k_to) -%}
    [
    {%- for k in range(k_from, k_to) %}
        {{ rand31('event_key', 1, k) }} % nullif(pool_count, 0) + 1{{ ',' if not loop.last }}
    {%- endfor %}
    ]
{%- endmacro %}

{#-
    Positions (1-based) in the list `draws` of a positive's first `count` usable negatives: not null, not
    in its user's `touched` list, not drawn before (a repeat keeps its first draw) and, when given, not in
    the list `excluded`.
-#}
{% macro pick_negatives(draws, count, excluded=none) -%}
    list_filter(range(1, len({{ draws }}) + 1), lambda i:
        {{ draws }}[i] is not null
        and not list_contains(touched, {{ draws }}[i])
        and not list_contains({{ draws }}[1:i - 1], {{ draws }}[i])
        {%- if excluded %}
        and not list_contains({{ excluded }}, {{ draws }}[i])
        {%- endif %}
    )[1:{{ count }}]
{%- endmacro %}

{#-
    Popularity draws k_from .. k_to - 1 of every row (pid, event_key) of `source` as two lists per pid in
    draw order: items and their categories (an as-of join on the cumulative weight of popular_pool).
-#}
{% macro popularity_draw_lists(k_from, k_to, source) -%}
    select
        pid,
        list_transform(ordered, lambda d: d.item_id) as items,
        list_transform(ordered, lambda d: d.category) as categories

    from (
        select
            draws.pid,
            list_sort(list({'k': draws.k, 'item_id': pool.item_id, 'category': pool.category})) as ordered

        from (
            select
                src.pid,
                draw.k,
                {{ rand31('src.event_key', 2, 'draw.k') }} * (select weight_total from popular_total)
                    / 2147483648.0 as target_weight
            from {{ source }} as src
            cross join range({{ k_from }}, {{ k_to }}) as draw(k)
        ) as draws
        -- join keys are plain columns computed above: an expression in the join condition can turn a
        -- hash join into a nested loop
        asof join popular_pool as pool on draws.target_weight >= pool.cum_start
        group by draws.pid
    )
{%- endmacro %}
