{#-
    Seeded pseudo-random numbers for sampling, in plain BIGINT arithmetic: the same inputs give the same
    draws on every run and every DuckDB version (DuckDB's hash() may change between releases, and md5 per
    draw is ~40x slower, which dominated training_examples at 1M events/day).
-#}

{#- One mixing round on a value in [0, 2^31): xorshift, then multiply by an odd constant mod 2^31. -#}
{% macro _mix31(x) -%}
    ((xor({{ x }}, ({{ x }}) >> 15) * 1597334677) % 2147483648)
{%- endmacro %}

{#- A BIGINT key (>= 0) from an md5 hex id: its first 60 bits, already uniformly distributed. -#}
{% macro hex_key(md5_column) -%}
    cast('0x' || left({{ md5_column }}, 15) as bigint)
{%- endmacro %}

{#-
    A uniform integer in [0, 2^31) from a key (BIGINT >= 0), the seed var, a salt (which sampler) and a
    draw number k: three mixing rounds over the folded inputs.
-#}
{% macro rand31(key, salt, k) -%}
    {%- set folded -%}
        ((xor(({{ key }}) % 2147483648, (({{ key }}) >> 31) % 2147483648)
          + ({{ int_var('negative_seed') }} % 2147483648) * 16807
          + {{ salt }} * 48271 + ({{ k }}) * 69621) % 2147483648)
    {%- endset -%}
    {{ _mix31(_mix31(_mix31(folded))) }}
{%- endmacro %}

{#-
    Negative draws number k_from .. k_to - 1 for every row (event_id, event_key, user_id) of `source`,
    mapped to items of the pool (`item_pool` uniformly, `popular_pool` by weight through an as-of join on
    the cumulative weight), minus items in `touched` and, when given, items in `exclude` for the same
    event; an item drawn twice for one event is kept at its first draw. Columns: event_id, k, item_id,
    category. Used inside training_examples, whose CTEs these names refer to.
-#}
{% macro negative_draws(sampler, salt, k_from, k_to, source, exclude=none) -%}
    select draws.event_id, draws.k, pool.item_id, pool.category
    from (
        select
            src.event_id,
            src.user_id,
            draw.k,
            {%- if sampler == 'uniform' %}
            {{ rand31('src.event_key', salt, 'draw.k') }} % (select nullif(items, 0) from pool_size) as pool_index
            {%- else %}
            {{ rand31('src.event_key', salt, 'draw.k') }} * (select weight_total from popular_total)
                / 2147483648.0 as target_weight
            {%- endif %}
        from {{ source }} as src
        cross join range({{ k_from }}, {{ k_to }}) as draw(k)
    ) as draws
    {#- join keys are plain columns computed above: an expression in the join condition can turn a hash
        join into a nested loop -#}
    {%- if sampler == 'uniform' %}
    inner join item_pool as pool on pool.pool_index = draws.pool_index
    {%- else %}
    asof join popular_pool as pool on draws.target_weight >= pool.cum_start
    {%- endif %}
    anti join touched on touched.user_id = draws.user_id and touched.item_id = pool.item_id
    {%- if exclude %}
    anti join {{ exclude }} as excluded on excluded.event_id = draws.event_id and excluded.item_id = pool.item_id
    {%- endif %}
    qualify row_number() over (partition by draws.event_id, pool.item_id order by draws.k) = 1
{%- endmacro %}


{#-
    The CTEs `item_pool` (every item of marts.item_features for ds, with a dense 0-based `pool_index` in
    item_id order: uniform draws index it) and `pool_size` (its row count). Shared by the models that
    sample negatives, so both draw from the same pool. Ends with a comma: more CTEs follow.
-#}
{% macro item_pool_ctes() -%}
item_pool as materialized (

    select
        item_id,
        category,
        row_number() over (order by item_id) - 1 as pool_index

    from {{ ref('item_features') }}
    where ds = {{ ds() }}

),

pool_size as (

    select count(*) as items from item_pool

),
{%- endmacro %}
