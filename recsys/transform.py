"""Stage 2: `dbt build` of `dbt_project/` for one ds: staging -> sessionized events -> marts, tests included.

dbt runs in this process through `dbtRunner`, against the warehouse file of the config (the profile
reads it from `$RECSYS_WAREHOUSE`). DuckDB allows one writer: the caller must not hold a write
connection to the warehouse while dbt runs (the Airflow DAG puts every writer in a one-slot pool).

A build is two invocations: `dbt parse` with every var but ds, then `dbt build` with ds on the manifest
that parse returned (`dbtRunner(manifest=...)`). ds is read only when SQL compiles (macros/vars.sql,
macros/get_where_subquery.sql), so the parse does not depend on the date: dbt's partial parsing (the
`partial_parse.msgpack` of the target folder) carries over from one ds to the next, where a new ds as a
parse-time var made every build parse the whole project again (about 4 s of a tiny day's 12 s).

Any failed model, data test or unit test raises `TransformError` naming the nodes and dbt's messages;
nodes skipped because something upstream failed are named too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from recsys.config import Config
from recsys.ingest import validate_ds
from recsys.warehouse import bound_memory, connect, migrate_layout

log = logging.getLogger(__name__)

# dbt result statuses (RunStatus / TestStatus / FreshnessStatus values) that mean the invocation did not do its job
FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})
MAX_SKIPPED_NAMED = 8
MAX_FAILING_ROWS = 5  # rows of a failed data test shown in the error


class TransformError(RuntimeError):
    """dbt build failed; the message names every failed node and dbt's message for it."""

    def __init__(self, message: str, failed: tuple[str, ...] = ()):
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True)
class TransformResult:
    """What `build` did: references only (node ids, a hash), never data.

    Attributes:
        ds: the logical date built.
        nodes: unique ids of every node that succeeded (models built, tests and unit tests passed).
        models: names of the models built, in run order.
        tests_passed: how many data tests and unit tests passed.
        warnings: `unique_id: message` of tests that warned (severity warn) without failing.
        manifest_sha256: sha256 of `<dbt_target>/manifest.json` as written by this invocation.
        project_sha256: sha256 of the nodes' and root macros' checksums: the same for the same dbt
            code whatever the ds or time of the run (a stable tag for MLflow runs).
        elapsed_s: wall time of the dbt invocation.
    """

    ds: str
    nodes: list[str]
    models: list[str]
    tests_passed: int
    warnings: list[str]
    manifest_sha256: str
    project_sha256: str
    elapsed_s: float


def dbt_vars(cfg: Config, ds: str | None) -> dict[str, Any]:
    """The `--vars` of a run: ds (left out when None), the `features` config section and the accepted
    behaviours."""
    run = {} if ds is None else {"ds": ds}
    return run | dataclasses.asdict(cfg.features) | {"behaviors": list(cfg.ingest.behaviors)}


def dbt_args(cfg: Config, ds: str | None, select: str | None = None, full_refresh: bool = False,
             extra_vars: dict[str, Any] | None = None, command: str = "build") -> list[str]:
    """Command-line arguments of `dbt <command>` for ds (project and profiles in cfg.paths.dbt_project);
    `extra_vars` go on top of the config's vars (e.g. the bucket sizes of dbt_project.yml).

    `command="parse"` with ds None gives the parse that `build` runs first: every var but ds.
    """
    project = Path(cfg.paths.dbt_project)
    args = [
        *command.split(),  # e.g. "source freshness"
        "--project-dir", str(project),
        "--profiles-dir", str(project),
        "--target-path", str(cfg.paths.dbt_target),
        "--log-path", str(Path(cfg.paths.home) / "dbt" / "logs"),
        "--vars", json.dumps(dbt_vars(cfg, ds) | (extra_vars or {})),
        "--no-use-colors",
        "--no-version-check",
        "--no-send-anonymous-usage-stats",
    ]
    if full_refresh:
        args.append("--full-refresh")
    if select:
        args += ["--select", select]
    return args


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values afterwards."""
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def dbt_session(warehouse: Path) -> Iterator[None]:
    """The block's dbt invocations run against `warehouse` (profiles.yml reads `$RECSYS_WAREHOUSE`); at the
    end, even on an error, the DuckDB database dbt-duckdb keeps open is closed (`_release_warehouse`)."""
    with _environment(RECSYS_WAREHOUSE=str(warehouse), DBT_SEND_ANONYMOUS_USAGE_STATS="false"):
        try:
            yield
        finally:
            _release_warehouse()


def result_status(result: Any) -> str:
    """A dbt node or source result's status as a lower-case string (`success`, `warn`, `runtime error`, ...)."""
    return str(getattr(result.status, "value", result.status)).lower()


def _has_failing_rows(result: Any) -> bool:
    """A data test that returned rows (not a model error, not a unit test)."""
    return bool(getattr(result, "failures", None)) and result.node.resource_type == "test"


def _describe(result: Any, con: duckdb.DuckDBPyConnection | None = None) -> str:
    """`unique_id (status): message` of one node result; dbt's multi-line messages (unit test diffs) indented.

    For a data test that failed, the first MAX_FAILING_ROWS rows its query returns follow (read through
    `con`), so the message says which column, key or row broke the rule, not only how many.
    """
    message = str(result.message or "").strip().replace("\n", "\n      ")
    if _has_failing_rows(result):
        message = f"{result.failures} failing row(s): {message}{_failing_rows(result.node, con)}"
    return f"{result.node.unique_id} ({result_status(result)}): {message}"


def _failing_rows(node: Any, con: duckdb.DuckDBPyConnection | None) -> str:
    """The first rows of a failed data test's compiled query, one `column=value, ...` line each ('' if unreadable)."""
    sql = getattr(node, "compiled_code", None)
    if con is None or not sql:
        return ""
    try:
        cursor = con.execute(f"SELECT * FROM ({sql}) AS failing LIMIT {MAX_FAILING_ROWS}")
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    except duckdb.Error as exc:  # the message without rows beats no message: say why they are missing
        return f"; failing rows not shown ({type(exc).__name__})"
    return "".join("\n      " + ", ".join(f"{n}={v!r}" for n, v in zip(names, row, strict=True)) for row in rows)


def _check(results: list[Any], ds: str, cfg: Config) -> None:
    """Raise TransformError if any node failed; nodes skipped because of it are listed after."""
    failed = [r for r in results if result_status(r) in FAILED_STATUSES]
    if not failed:
        return
    skipped = [r.node.unique_id for r in results if result_status(r) == "skipped"]
    lines = [f"dbt build for ds={ds} failed on {len(failed)} node(s):"]
    with ExitStack() as stack:  # the warehouse is opened only to show the rows of failed data tests
        con = None
        if any(_has_failing_rows(r) for r in failed):
            with suppress(duckdb.Error, OSError):
                con = stack.enter_context(closing(connect(cfg, read_only=True)))
        lines += [f"  - {_describe(r, con)}" for r in failed]
    if skipped:
        shown = ", ".join(skipped[:MAX_SKIPPED_NAMED]) + (", ..." if len(skipped) > MAX_SKIPPED_NAMED else "")
        lines.append(f"  {len(skipped)} node(s) skipped because of the failures: {shown}")
    raise TransformError("\n".join(lines), failed=tuple(r.node.unique_id for r in failed))


def _release_warehouse() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process after an invocation.

    dbt-duckdb caches one environment (and its DuckDB connection) on a class attribute and does not always
    close it when dbt cleans up; while it is open, this process cannot open the warehouse with another
    configuration (e.g. read-only) and other processes cannot write it. The next invocation recreates it.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with DuckDBConnectionManager._LOCK:
        env = DuckDBConnectionManager._ENV
        if env is not None:
            env.close()
        DuckDBConnectionManager.close_all_connections()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def project_fingerprint(manifest_path: Path) -> str:
    """sha256 of the checksums of every node, unit test and root-project macro: changes only with the dbt code."""
    manifest = json.loads(manifest_path.read_text())
    project = manifest["metadata"].get("project_name", "recsys")
    checksums = {uid: n["checksum"]["checksum"] for uid, n in manifest["nodes"].items() if "checksum" in n}
    checksums |= {uid: str(u.get("checksum")) for uid, u in manifest.get("unit_tests", {}).items()}
    checksums |= {uid: m.get("checksum", {}).get("checksum", "") for uid, m in manifest["macros"].items()
                  if m.get("package_name") == project}
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()


def build(cfg: Config, ds: str, select: str | None = None, full_refresh: bool = False,
          extra_vars: dict[str, Any] | None = None) -> TransformResult:
    """`dbt build` for ds: every model, data test and unit test of the project (or `select`).

    Args:
        cfg: pipeline config; features.* become dbt vars, paths.warehouse the DuckDB file.
        ds: logical date YYYY-MM-DD.
        select: optional dbt selection (e.g. `marts.training_examples+`), default everything.
        full_refresh: rebuild the sessionized events from all of raw (after past raw days changed);
            the marts keep their other ds partitions (`full_refresh: false` in dbt_project.yml).
        extra_vars: dbt vars that are not config (e.g. `history_bucket_events`: the bucket sizes, which
            change cost, never rows), on top of the config's.

    Raises:
        ValueError: ds is not a YYYY-MM-DD date.
        FileNotFoundError: the warehouse does not exist yet (ingest creates it).
        TransformError: dbt failed to start, or any node failed; the message names them.
        FreshnessError (a TransformError): ds is a live date and a raw source is past its error_after.
    """
    ds = validate_ds(ds)
    warehouse = Path(cfg.paths.warehouse)
    if not warehouse.exists():
        raise FileNotFoundError(f"warehouse {warehouse} does not exist yet; run `recsys ingest --ds {ds}` first")
    from dbt.cli.main import dbtRunner  # dbt loads only when this stage runs

    from recsys.freshness import gate

    gate(cfg, ds)  # live runs only: raw sources older than __sources.yml allows fail before anything is built
    with closing(connect(cfg, read_only=False)) as con:
        bound_memory(con, "RECSYS_DUCKDB_MEMORY_LIMIT", "3GB")  # dbt's own limit (profiles.yml)
        migrate_layout(con)  # before dbt: it would replace an older layout's tables, not move their rows
    started = time.monotonic()
    with dbt_session(warehouse):
        try:
            outcome = dbtRunner().invoke(dbt_args(cfg, None, extra_vars=extra_vars, command="parse"))
            if outcome.success:  # a failed parse (e.g. a malformed var) is reported like a failed build
                outcome = dbtRunner(manifest=outcome.result).invoke(
                    dbt_args(cfg, ds, select, full_refresh, extra_vars))
        finally:
            dbt_done = time.monotonic()
    done = time.monotonic()
    elapsed = done - started
    # closing checkpoints what dbt's last writes left in the write-ahead log: part of the stage's cost
    log.info("dbt ran %.1f s; closing the warehouse took %.1f s", dbt_done - started, done - dbt_done)
    if outcome.exception is not None:
        raise TransformError(f"dbt build for ds={ds} did not run: {outcome.exception}") from outcome.exception
    results = list(getattr(outcome.result, "results", None) or [])
    _check(results, ds, cfg)
    if not outcome.success:  # e.g. a compilation problem reported without a node result
        raise TransformError(f"dbt build for ds={ds} failed without a failed node; see {cfg.paths.home}/dbt/logs")
    return _result(cfg, ds, results, elapsed)


def _result(cfg: Config, ds: str, results: list[Any], elapsed: float) -> TransformResult:
    manifest = Path(cfg.paths.dbt_target) / "manifest.json"
    passed = [r for r in results if result_status(r) in ("success", "pass", "warn")]
    tests = [r for r in passed if r.node.resource_type in ("test", "unit_test")]
    summary = TransformResult(
        ds=ds,
        nodes=[r.node.unique_id for r in passed],
        models=[r.node.name for r in passed if r.node.resource_type == "model"],
        tests_passed=len(tests),
        warnings=[_describe(r) for r in results if result_status(r) == "warn"],
        manifest_sha256=_sha256(manifest),
        project_sha256=project_fingerprint(manifest),
        elapsed_s=round(elapsed, 3),
    )
    log.info("transform ds=%s: %d models, %d tests passed in %.1fs", ds, len(summary.models),
             summary.tests_passed, elapsed)
    return summary
