"""Write docs/cli.md from the Typer app itself, so the reference cannot drift from the code.

    python ops/gen_cli_docs.py           # rewrite docs/cli.md
    python ops/gen_cli_docs.py --check   # exit 1 when docs/cli.md is stale (tests/unit/test_docs_fresh.py)

Walks the command tree Typer builds (`typer.main.get_command`; Typer 0.29 ships its own click, so the
tree is read by attribute, not by isinstance) and renders each command's help, arguments and options
as Markdown; nothing depends on the terminal width.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "cli.md"
COMPLETION = ("install_completion", "show_completion")  # Typer's own options, same in every Typer app
HEADER = """# CLI reference

Generated from the Typer app by `python ops/gen_cli_docs.py` (`make docs`); do not edit by hand.
Every stage command is the same function the Airflow task runs; `--set section.key=value` overrides any
key of the [configuration](configuration.md), `--config` points at another YAML file.
"""


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    """(full name, command) for every command under group, depth first, in the app's order."""
    out = []
    for name, command in group.commands.items():
        full = f"{prefix} {name}"
        if hasattr(command, "commands"):  # a group
            out.append((full, command))
            out.extend(_commands(command, full))
        else:
            out.append((full, command))
    return out


def _is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def _default(param: Any) -> str:
    if param.required or param.default is None or callable(param.default):
        return ""
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return param.opts[0] if param.default else param.secondary_opts[0]
    if isinstance(param.default, list | tuple):
        return ", ".join(map(str, param.default)) if param.default else ""
    return str(param.default)


def _param_row(param: Any) -> str:
    if _is_argument(param):
        name = f"`{param.name.upper()}`"
    else:
        name = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    text = (getattr(param, "help", None) or "").replace("|", "/")
    kind = "flag" if getattr(param, "is_flag", False) else param.bare_type().lower()
    kind = kind.removeprefix("list[").removesuffix("]")  # repeatable options say so below
    multiple = " (repeatable)" if getattr(param, "multiple", False) else ""
    required = "yes" if param.required else ""
    return f"| {name} | {kind}{multiple} | {required} | {_default(param)} | {text} |"


def _usage(full: str, params: list[Any]) -> str:
    parts = []
    for p in params:
        if _is_argument(p):
            parts.append(p.name.upper())
        elif p.required:
            parts.append(f"{p.opts[0]} {p.name.upper()}")
        elif getattr(p, "is_flag", False):
            parts.append(f"[{p.opts[0]}]")
        else:
            parts.append(f"[{p.opts[0]} {p.opts[0].lstrip('-').upper()}]")
    return " ".join([full, *parts])


def _section(full: str, command: Any) -> list[str]:
    lines = [f"## `{full}`", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    if hasattr(command, "commands"):
        names = ", ".join(f"`{full} {n}`" for n in command.commands)
        return lines + [f"Subcommands: {names}.", ""]
    params = [p for p in command.params if p.name != "help"]
    lines += ["```", _usage(full, params), "```", ""]
    if params:
        lines += ["| parameter | type | required | default | help |", "|---|---|---|---|---|"]
        lines += [_param_row(p) for p in params] + [""]
    return lines


def render() -> str:
    """The whole of docs/cli.md."""
    sys.path.insert(0, str(REPO))
    import typer

    from recsys.cli import app

    root = typer.main.get_command(app)
    lines = [HEADER]
    if root.help:
        lines += [f"`recsys`: {root.help.strip()} Shell completion: `recsys --install-completion`.", ""]
    root_params = [p for p in root.params if p.name not in ("help", *COMPLETION)]
    if root_params:
        lines += ["Options of `recsys` itself (before the command):", "",
                  "| parameter | type | required | default | help |", "|---|---|---|---|---|"]
        lines += [_param_row(p) for p in root_params] + [""]
    for full, command in _commands(root, "recsys"):
        lines += _section(full, command)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    import docgen  # ops/docgen.py: the script's own folder is on sys.path when run as a script

    return docgen.main(TARGET, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
