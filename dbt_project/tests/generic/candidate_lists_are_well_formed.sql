{#-
    Fails with one row per candidate list that breaks a rule of marts.scoring_candidate_lists: an empty
    list, more than max_items items, source counts that do not add up to the list length, or a
    cold-start list with a co-visitation or category part.
    Items are distinct within a list by construction (the sources are made disjoint); that is checked
    by tests/data/test_candidates.py, not here: a per-list distinct costs ~10 s at 166k users x 200.
-#}
{% test candidate_lists_are_well_formed(model, max_items) %}

select
    ds,
    user_id,
    len(item_ids) as items,
    n_covisitation,
    n_category_popular,
    n_global_popular

from {{ model }}
where len(item_ids) = 0
    or len(item_ids) > {{ max_items | int }}
    or n_covisitation < 0 or n_category_popular < 0 or n_global_popular < 0
    or n_covisitation + n_category_popular + n_global_popular <> len(item_ids)
    or (is_cold_start and n_covisitation + n_category_popular > 0)

{% endtest %}
