"""docs/cli.md and docs/configuration.md are generated; they must match the code (`make docs` refreshes)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "doc"), [("gen_cli_docs.py", "docs/cli.md"),
                                             ("gen_config_docs.py", "docs/configuration.md")])
def test_generated_doc_is_up_to_date(script: str, doc: str) -> None:
    render = runpy.run_path(str(REPO / "ops" / script))["render"]
    assert (REPO / doc).read_text() == render(), f"{doc} is stale: run `make docs` (python ops/{script})"


def test_cli_reference_covers_every_command() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    for command in ("ingest", "transform", "validate", "train", "promote", "score", "evaluate", "run", "status",
                    "sql", "summary", "freshness", "data synth", "data import movielens", "data import taobao"):
        assert f"## `recsys {command}`" in text, command


def test_configuration_reference_covers_every_key() -> None:
    import dataclasses
    import typing

    from recsys.config import Config

    text = (REPO / "docs" / "configuration.md").read_text()
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        for f in dataclasses.fields(cls):
            if section.name == "paths" and f.name in ("home", "dbt_project", "feature_specs"):
                continue
            assert f"`{section.name}.{f.name}`" in text, f"{section.name}.{f.name}"
