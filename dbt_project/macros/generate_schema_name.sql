{#-
    Schemas are exactly the configured name (`staging`, `intermediate`, `marts`), not dbt's default
    `<target schema>_<custom>`: Python code and other tools read these names directly.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
