{#-
    Typed access to the run's vars. Values are checked before they reach SQL text, so a malformed
    `--vars` fails compilation instead of producing wrong (or injected) SQL.
-#}

{#- The logical date of the run as a DATE literal, e.g. `date '2024-01-02'`. -#}
{% macro ds() -%}
    {%- set value = var('ds') -%}
    {%- if value is none or not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', value | string) -%}
        {%- if execute -%}
            {{ exceptions.raise_compiler_error("var ds must be a date written YYYY-MM-DD, got '" ~ value ~ "'") }}
        {%- endif -%}
        {%- set value = '1970-01-01' -%}  {#- parse time: a placeholder, never executed -#}
    {%- endif -%}
    date '{{ value }}'
{%- endmacro %}

{#- A non-negative integer var (window sizes, counts, seeds) as an integer literal. -#}
{% macro int_var(name) -%}
    {%- set raw = var(name) -%}
    {%- if not modules.re.fullmatch('[0-9]+', raw | string) -%}
        {{ exceptions.raise_compiler_error("var " ~ name ~ " must be a non-negative integer, got '" ~ raw ~ "'") }}
    {%- endif -%}
    {{ raw | int }}
{%- endmacro %}

{#- A non-negative number var (e.g. an exponent) as a DOUBLE literal. -#}
{% macro float_var(name) -%}
    {%- set raw = var(name) -%}
    {%- if not modules.re.fullmatch('[0-9]+([.][0-9]+)?([eE][-+]?[0-9]+)?', raw | string) -%}
        {{ exceptions.raise_compiler_error("var " ~ name ~ " must be a non-negative number, got '" ~ raw ~ "'") }}
    {%- endif -%}
    cast({{ raw | float }} as double)
{%- endmacro %}
