"""The command line shared by the generated-doc scripts: write the doc, or `--check` that it is current."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(target: Path, render: Callable[[], str], description: str, argv: list[str] | None = None) -> int:
    """Write `render()` to `target`; with `--check`, exit 1 (and say how to refresh) when it differs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {target.name} is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if (target.read_text() if target.exists() else "") != text:
            print(f"{target} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0
