"""Security: `recsys sql` cannot write anywhere, a hostile ds never reaches SQL at any CLI entry point,
SQL text never carries values, and the compose file takes its secrets from the environment."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import Config
from recsys.ingest import ingest, partition_dir
from tests.reliability.helpers import REPO, config_for, digest

DS = "2024-01-01"
HOSTILE = "2024-01-01'; DROP TABLE raw.behaviors; --"
runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("security")
    cfg = config_for(home)
    folder = partition_dir(cfg.paths.landing, "behaviors", DS)
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("user_id,item_id,behavior,ts\n" +
                                  "".join(f"{u},{u + 1},view,2024-01-01T0{u}:00:00\n" for u in range(1, 9)))
    ingest(cfg, DS)
    return home


@pytest.fixture
def cfg(home: Path) -> Config:
    return config_for(home)


def invoke(home: Path, *args: str):
    return runner.invoke(app, list(args), env={"RECSYS_HOME": str(home)})


def test_sql_reads(home: Path) -> None:
    result = invoke(home, "sql", "SELECT count(*) AS n, max(user_id) AS top FROM raw.behaviors")
    assert result.exit_code == 0, result.output
    assert "8" in result.output


@pytest.mark.parametrize("statement", [
    "INSERT INTO raw.behaviors SELECT * FROM raw.behaviors",
    "CREATE TABLE raw.evil AS SELECT 1 AS x",
    "DROP TABLE raw.behaviors",
    "DELETE FROM raw.behaviors",
    "UPDATE raw.behaviors SET user_id = 0",
    "ATTACH '{tmp}/attached.duckdb' AS evil",
    "COPY raw.behaviors TO '{tmp}/stolen.csv'",
    "COPY (SELECT 1) TO '{tmp}/stolen.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{tmp}/export'",
    "SELECT * FROM read_csv('{tmp}/probe.txt')",
    "SET enable_external_access = true",
    "INSTALL httpfs",
])
def test_sql_cannot_write_or_touch_files(home: Path, cfg: Config, tmp_path: Path, statement: str) -> None:
    (tmp_path / "probe.txt").write_text("secret\n")
    before = digest(cfg.paths.warehouse)
    result = invoke(home, "sql", statement.format(tmp=tmp_path))
    assert result.exit_code == 1, result.output
    assert "error" in result.output
    assert digest(cfg.paths.warehouse) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.txt"]  # nothing attached, copied, exported


ENTRY_POINTS = [
    *[[stage, "--ds", HOSTILE] for stage in ("ingest", "transform", "validate", "train", "promote", "score",
                                             "evaluate")],
    ["run", "--start", HOSTILE, "--end", "2024-01-02"],
    ["run", "--start", "2024-01-01", "--end", HOSTILE],
    ["data", "synth", "--days", "1", "--users", "5", "--items", "5", "--start", HOSTILE],
    ["data", "import", "movielens", "{home}/nothing", "--start", HOSTILE],
    ["data", "import", "taobao", "{home}/nothing.csv", "--end", HOSTILE],
]


@pytest.mark.parametrize("args", ENTRY_POINTS, ids=[" ".join(a[:2]) if a[0] != "run" else f"run {a[1]}"
                                                    for a in ENTRY_POINTS])
def test_hostile_ds_is_refused_before_any_sql(home: Path, cfg: Config, args: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    before = digest(cfg.paths.warehouse)
    opened: list[tuple] = []
    real_connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: opened.append(a) or real_connect(*a, **k))
    result = invoke(home, *[a.format(home=home) for a in args])
    monkeypatch.undo()
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clear error, not a traceback
    assert "YYYY-MM-DD" in result.output, result.output
    assert opened == []  # no database was even opened
    assert digest(cfg.paths.warehouse) == before


def test_quotes_in_paths_stay_paths(tmp_path: Path) -> None:
    """A landing folder whose name is SQL is written to, and read from, as a folder (COPY TO path escaping)."""
    landing = tmp_path / "x'; DROP TABLE raw.behaviors; --"
    result = runner.invoke(app, ["data", "synth", "--days", "1", "--users", "5", "--items", "8", "--format", "jsonl",
                                 "--landing", str(landing)], env={"RECSYS_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    files = list((landing / "behaviors" / f"ds={DS}").glob("*.jsonl"))
    assert len(files) == 1 and files[0].read_text().startswith('{"user_id"')


# Names that hold values from a user or a file. SQL built as an f-string may interpolate table names,
# column lists and other constants of the code, never one of these: they must be bound parameters.
VALUE_NAMES = {"ds", "day", "prev", "start", "end", "ds_from", "ds_to", "query", "path", "file", "user_id",
               "item_id", "record", "reason"}
ESCAPERS = ("quote", "escape", "sql_path", "literal")  # a value passed through one of these is a quoted literal
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|DELETE|UPDATE|CREATE|DROP|COPY|ATTACH|WHERE)\b", re.IGNORECASE)


def _sql_fstrings(tree: ast.AST) -> list[ast.JoinedStr]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if SQL_WORDS.search(text) and not text.lstrip().startswith(("{", "error", "ds ")):
                found.append(node)
    return found


def _interpolated_names(node: ast.JoinedStr) -> set[str]:
    names = set()
    for value in node.values:
        if isinstance(value, ast.FormattedValue):
            inner = value.value
            if isinstance(inner, ast.Call) and any(e in ast.unparse(inner.func) for e in ESCAPERS):
                continue
            names |= {n.id for n in ast.walk(inner) if isinstance(n, ast.Name)}
    return names


def test_no_sql_fstring_interpolates_a_value() -> None:
    offenders = []
    for source in sorted([*(REPO / "recsys").rglob("*.py"), *(REPO / "feature_store").rglob("*.py"),
                          *(REPO / "dags").rglob("*.py")]):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in _sql_fstrings(tree):
            bad = _interpolated_names(node) & VALUE_NAMES
            if bad and "Error" not in ast.unparse(node) and "raise" not in ast.unparse(node):
                offenders.append(f"{source.relative_to(REPO)}:{node.lineno} interpolates {sorted(bad)}")
    assert offenders == []


SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$", re.IGNORECASE)
REQUIRED_VAR = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_secrets_come_from_the_environment() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    checked = 0
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRET_KEY.search(key) and not key.endswith("_FILE"):  # a path to a secrets file
                assert REQUIRED_VAR.match(value), f"{name}.{key} = {value!r} is not a required ${{VAR:?...}}"
                checked += 1
            for match in URL_PASSWORD.finditer(value):
                assert REQUIRED_VAR.match(match["password"]), f"{name}.{key} has a literal password in a URL"
    assert checked >= 3  # the file does hold secrets (Postgres, Airflow, MLflow)
