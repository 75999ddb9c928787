-- Training examples of ds, one row per example: every behaviour of ds is a positive (label 1), and each
-- positive gets negatives_per_positive negatives (label 0) sharing its context:
-- popularity_negatives_per_positive of them drawn with weight events_30d ** popularity_exponent
-- (marts.item_features), the rest uniformly over the items of ds; never an item the user touched up to
-- the end of ds, never twice for one positive. Draws are seeded (negative_seed) and reproducible.
--
-- The point-in-time histories, DIEN negative histories and DSIN sessions are NOT here: they are stored
-- once per positive in marts.training_histories, keyed by (ds, event_id); every example carries the
-- event_id of its positive (a positive's own event_id for label 1), so the feature store gathers them
-- by that key instead of reading the same lists negatives_per_positive + 1 times.

{% set n_negatives = int_var('negatives_per_positive') | int %}
{% set n_popular = int_var('popularity_negatives_per_positive') | int %}
{% if n_popular > n_negatives %}
    {{ exceptions.raise_compiler_error("var popularity_negatives_per_positive (" ~ n_popular ~ ") must not exceed negatives_per_positive (" ~ n_negatives ~ ")") }}
{% endif %}
{% set samplers = [('uniform', n_negatives - n_popular, 1), ('popularity', n_popular, 2)] %}

with

events as (

    select * from {{ ref('int_events_sessionized') }}
    where ds <= {{ ds() }}

),

profiles as (

    select * from {{ ref('stg_users') }}

),

-- every behaviour of ds is a positive (the same events marts.training_histories keys its rows by).
-- pid: a dense integer id for this query only; sampling groups, windows and joins on it instead of the
-- 32-character event_id (string keys made those operators several times slower and spill at 1M events)
positives as materialized (

    select
        *,
        {{ hex_key('event_id') }} as event_key,
        row_number() over () as pid

    from events
    where ds = {{ ds() }}

),

-- what the samplers read: `event_id` here is the integer pid (the macros key their draws by event_id)
draw_sources as (

    select pid as event_id, event_key, user_id from positives

),

day_users as (

    select distinct user_id from positives

),

{{ item_pool_ctes() }}

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

-- everything the active users touched up to the end of ds: never a negative
touched as materialized (

    select distinct events.user_id, events.item_id
    from events
    semi join day_users on events.user_id = day_users.user_id

),

{% for sampler, count, salt in samplers if count > 0 %}
{% set exclude = 'uniform_negatives' if sampler == 'popularity' and samplers[0][1] > 0 else none %}
-- {{ sampler }} negatives, first pass: count + 1 draws per positive
{{ sampler }}_draws as (

    {{ negative_draws(sampler, salt, 0, count + 1, 'draw_sources', exclude) }}

),

-- second pass, only for the positives the first pass left short (touched items, repeats)
{{ sampler }}_short as (

    select event_id, event_key, user_id from draw_sources
    anti join (
        select event_id from {{ sampler }}_draws group by event_id having count(*) >= {{ count }}
    ) as complete on complete.event_id = draw_sources.event_id

),

{{ sampler }}_retries as (

    {{ negative_draws(sampler, salt, count + 1, 4 * count + 9, sampler ~ '_short', exclude) }}

),

-- the first `count` distinct items by draw number (a running count, not row_number() <= n, which the
-- optimizer turns into a per-group top-n aggregate that is several times slower here)
{{ sampler }}_negatives as (

    select event_id, item_id, category, '{{ sampler }}' as sampler, k
    from (
        select
            *,
            count(*) over (partition by event_id order by k rows between unbounded preceding and current row)
                as draw_rank
        from (
            select event_id, item_id, min(k) as k, any_value(category) as category
            from (select * from {{ sampler }}_draws union all select * from {{ sampler }}_retries)
            group by event_id, item_id
        )
    )
    where draw_rank <= {{ count }}

),

{% endfor %}

negatives as (

    select
        event_id,
        item_id,
        category,
        sampler,
        row_number() over (partition by event_id order by sampler = 'popularity', k) as negative_number

    from (
        select event_id, 0::bigint as item_id, '' as category, '' as sampler, 0 as k from draw_sources where false
        {%- for sampler, count, salt in samplers if count > 0 %}
        union all
        select * from {{ sampler }}_negatives
        {%- endfor %}
    )

),

-- positives and negatives share the positive's context (and, through event_id, its history); keyed by pid
examples as (

    select pid, item_id, category, 1 as label, cast(null as varchar) as sampler, 0 as negative_number
    from positives

    union all

    select event_id as pid, item_id, category, 0 as label, sampler, negative_number
    from negatives

),

final as (

    select
        {{ ds() }} as ds,
        -- the positive's id and the negative's number: unique and stable, without hashing (md5 per row is slow)
        case when examples.label = 1 then positives.event_id
             else positives.event_id || '-n' || examples.negative_number end as example_id,
        positives.event_id,
        positives.user_id,
        examples.item_id,
        examples.category,
        cast(examples.label as integer) as label,
        examples.sampler as negative_sampler,
        positives.event_at,
        profiles.age,
        profiles.gender,
        profiles.occupation,
        profiles.city,
        cast(hour(positives.event_at) as integer) as hour,
        cast(isodow(positives.event_at) as integer) as weekday,
        positives.device

    from examples
    inner join positives on examples.pid = positives.pid
    left join profiles on positives.user_id = profiles.user_id

)

select * from final
