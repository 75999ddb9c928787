"""Print a ready .env for docker-compose.yml: .env.example with every `change-me-*` value replaced.

Usage: `python3 docker/generate_env.py > .env` (standard library only, so any Python 3 works).
Secrets are URL-safe (they are pasted into postgresql:// and redis:// URLs); the Fernet key is the
urlsafe base64 of 32 random bytes, which is exactly what Airflow's Fernet expects.
"""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"
PLACEHOLDER = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=change-me-[\w-]*$")


def secret_for(name: str) -> str:
    """A fresh random value suited to variable `name`."""
    if name == "AIRFLOW_FERNET_KEY":
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    # hex: no character that needs escaping in a URL, a shell or YAML
    return secrets.token_hex(24)


def render(example: str) -> str:
    """The text of `example` with each `NAME=change-me-...` line given a generated value."""
    lines = []
    for line in example.splitlines():
        match = PLACEHOLDER.match(line)
        lines.append(f"{match['name']}={secret_for(match['name'])}" if match else line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="template (default: .env.example)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.example.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
