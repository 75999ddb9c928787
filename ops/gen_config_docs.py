"""Write docs/configuration.md from conf/recsys.yaml and the config dataclasses (recsys/config.py).

    python ops/gen_config_docs.py           # rewrite docs/configuration.md
    python ops/gen_config_docs.py --check   # exit 1 when it is stale (tests/unit/test_docs_fresh.py)

One table per section: every key the code accepts (dataclass fields), its type, the code default, the
value in conf/recsys.yaml, and what it does (the YAML comment, else the comment in recsys/config.py).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "configuration.md"
YAML_FILE = REPO / "conf" / "recsys.yaml"
CONFIG_PY = REPO / "recsys" / "config.py"
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*)(#\s?(?P<comment>.*))?$")
COMMENT_ONLY = re.compile(r"^(?P<indent>\s*)#\s?(?P<comment>.*)$")
HEADER = """# Configuration reference

Generated from `conf/recsys.yaml` and `recsys/config.py` by `python ops/gen_config_docs.py` (`make docs`);
do not edit by hand.

One YAML file configures every stage: `conf/recsys.yaml`, or the file named by `RECSYS_CONFIG`. Every
path hangs off one root, `$RECSYS_HOME` (else `home`, relative to the file). Any key can be overridden
for one command with `--set section.key=value` (lists as JSON: `--set evaluate.ks=[5,10]`), or in code
with `load_config(overrides={"section.key": value})`. Unknown keys are errors, not silently ignored.
"""


def yaml_comments(text: str) -> dict[tuple[str, str], str]:
    """{(section, key): comment} from the YAML's inline comments and the comment lines that continue them.

    A comment-only line indented deeper than the key before it continues that key's comment (the YAML
    aligns continuation comments under the first one).
    """
    out: dict[tuple[str, str], str] = {}
    section, last = "", None
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if match:
            key, comment = match["key"], (match["comment"] or "").strip()
            if not match["indent"]:
                section, last = key, (key, "")
            else:
                last = (section, key)
            out[last] = comment
            continue
        cont = COMMENT_ONLY.match(line)
        if cont and last and len(cont["indent"]) > 2:
            out[last] = f"{out.get(last, '')} {cont['comment'].strip()}".strip()
        elif not line.strip() or not cont:
            last = None
    return out


def code_comments(text: str) -> dict[tuple[str, str], str]:
    """{(dataclass name, field): comment} from `name: type = default  # comment` lines of recsys/config.py."""
    out, cls = {}, None
    for line in text.splitlines():
        if line.startswith("class "):
            cls = line.split()[1].split("(")[0].rstrip(":")
        elif cls and (m := re.match(r"^\s{4}(\w+): [^=#]+(?:=[^#]*)?#\s?(.*)$", line)):
            out[(cls, m[1])] = m[2].strip()
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_name(tp: object) -> str:
    text = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("pathlib.Path", "Path").replace("NoneType", "None").replace(" | ", " or ")


def section_rows(section: str, cls: type, raw: dict, yaml_notes: dict, code_notes: dict) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default (code) | conf/recsys.yaml | what it does |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if section == "paths" and f.name in ("home", "dbt_project", "feature_specs"):
            continue  # resolved by the loader, not keys of the file
        factory = f.default_factory  # type: ignore[misc]
        missing = f.default is dataclasses.MISSING and factory is dataclasses.MISSING
        in_yaml = raw.get(f.name, "") if isinstance(raw, dict) else ""
        note = yaml_notes.get((section, f.name)) or code_notes.get((cls.__name__, f.name), "")
        yaml_value = "" if f.name not in (raw or {}) else _fmt(in_yaml)
        default = "" if missing else _fmt(f.default if factory is dataclasses.MISSING else factory())
        rows.append(f"| `{section}.{f.name}` | {_type_name(hints[f.name])} | {default} | {yaml_value} | "
                    f"{note.replace('|', '/')} |")
    return rows


def render() -> str:
    """The whole of docs/configuration.md."""
    sys.path.insert(0, str(REPO))
    from recsys import config as config_module

    text = YAML_FILE.read_text()
    raw = yaml.safe_load(text) or {}
    yaml_notes, code_notes = yaml_comments(text), code_comments(CONFIG_PY.read_text())
    hints = typing.get_type_hints(config_module.Config)
    lines = [HEADER, "## `home`", "",
             f"`home: {_fmt(raw.get('home'))}`: {yaml_notes.get(('home', ''), '')}. "
             "`$RECSYS_HOME` wins over it.", ""]
    path_defaults = {"landing", "warehouse", "mlflow_db", "mlflow_artifacts", "airflow_home", "dbt_target",
                     "checkpoints"}
    for f in dataclasses.fields(config_module.Config):
        cls = hints[f.name]
        if not dataclasses.is_dataclass(cls):
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ and not cls.__doc__.startswith(
            cls.__name__ + "(") else ""
        lines += [f"## `{f.name}`", ""]
        if f.name == "paths":
            doc = ("Relative to `home` (or `$RECSYS_HOME`). A key left out of the file takes the value shown "
                   "in the file column (the loader's defaults are those names).")
            assert path_defaults <= {x.name for x in dataclasses.fields(cls)}
        if doc:
            lines += [doc, ""]
        lines += section_rows(f.name, cls, raw.get(f.name) or {}, yaml_notes, code_notes) + [""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    import docgen  # ops/docgen.py: the script's own folder is on sys.path when run as a script

    return docgen.main(TARGET, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
