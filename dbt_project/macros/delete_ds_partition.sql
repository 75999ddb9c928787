{#-
    Pre-hook of the incremental marts: remove this run's ds before the new rows go in.
    delete+insert alone deletes only the ds values present in the new rows, so a ds whose rebuild
    is empty would keep stale rows. Runs inside the model's transaction: a failure keeps the old rows.
-#}
{% macro delete_ds_partition() -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where ds = {{ ds() }}
    {%- endif -%}
{%- endmacro %}
