"""`make ui`, `make backfill` and `make stop`: Airflow and MLflow as local services, stopped by process group.

    python ops/airflow_ops.py ui                          # api-server + scheduler + dag-processor + mlflow ui
    python ops/airflow_ops.py backfill --start A --end B  # the Airflow way: scheduler + `airflow backfill create`
    python ops/airflow_ops.py stop                        # every service started by ui/backfill
    python ops/airflow_ops.py status

Each service runs in its own session (setsid), so its pid is also its process-group id; the pid and the
log live in `$RECSYS_HOME/run/<service>.{pid,log}`, and `stop` signals the whole group (uvicorn workers,
LocalExecutor workers and task processes die with their parent). Only the standard library is used here;
Airflow and MLflow run as their own CLIs from the same virtual environment.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAG_ID = "recsys_daily"
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor")
TERMINAL = {"success", "failed"}


@dataclass(frozen=True)
class Settings:
    """Where things are: resolved once from the recsys config and the environment."""

    home: Path  # RECSYS_HOME
    airflow_home: Path
    run_dir: Path  # pid and log files
    tracking_uri: str
    pool: str
    airflow_port: int
    mlflow_port: int
    end_date: str | None = None  # the DAG's last scheduled ds (airflow.end_date / RECSYS_END_DATE)
    start_date: str = "2024-01-01"  # the DAG's first ds (airflow.start_date / RECSYS_START_DATE)


def settings() -> Settings:
    sys.path.insert(0, str(REPO))
    from recsys.config import load_config  # cheap: dataclasses + YAML

    cfg = load_config()
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or cfg.paths.airflow_home)
    return Settings(home=cfg.paths.home, airflow_home=airflow_home, run_dir=cfg.paths.home / "run",
                    tracking_uri=cfg.tracking_uri, pool=cfg.airflow.pool,
                    airflow_port=int(os.environ.get("AIRFLOW_PORT", "8080")),
                    mlflow_port=int(os.environ.get("MLFLOW_PORT", "5000")),
                    end_date=_day(os.environ.get("RECSYS_END_DATE") or cfg.airflow.end_date),
                    start_date=_day(os.environ.get("RECSYS_START_DATE") or cfg.airflow.start_date))


def _day(value: object) -> str | None:
    """A YAML date (or string) as YYYY-MM-DD."""
    return str(value)[:10] if value else None


def service_env(s: Settings) -> dict[str, str]:
    """The environment every Airflow process gets; values already exported (Makefile, tests) win."""
    env = dict(os.environ)
    defaults = {
        "AIRFLOW_HOME": str(s.airflow_home),
        "RECSYS_HOME": str(s.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",  # the DuckDB pool has one slot anyway; keeps a laptop responsive
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__API__PORT": str(s.airflow_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{s.airflow_port}/execution/",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    env["PATH"] = defaults["PATH"]  # the venv's airflow, mlflow and recsys first
    return env


# --------------------------------------------------------------------------- processes


def _pid_file(s: Settings, name: str) -> Path:
    return s.run_dir / f"{name}.pid"


def running_pgid(s: Settings, name: str) -> int | None:
    """The process group of a service started by this script, if it is still alive."""
    path = _pid_file(s, name)
    if not path.exists():
        return None
    try:
        pgid = int(path.read_text().strip())
        os.killpg(pgid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None
    return pgid


def start_service(s: Settings, name: str, argv: list[str]) -> int:
    """Start argv in a new session (pid == process group id), log to run/<name>.log; return the pgid."""
    pgid = running_pgid(s, name)
    if pgid:
        print(f"  {name}: already running (process group {pgid})")
        return pgid
    s.run_dir.mkdir(parents=True, exist_ok=True)
    log = (s.run_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=service_env(s), cwd=REPO, start_new_session=True)
    _pid_file(s, name).write_text(str(proc.pid))
    print(f"  {name}: started (process group {proc.pid}, log {s.run_dir / (name + '.log')})")
    return proc.pid


def stop_service(s: Settings, name: str, grace_s: float = 20.0) -> bool:
    """SIGTERM the service's process group, then SIGKILL what is left after grace_s. True if one ran."""
    pgid = running_pgid(s, name)
    if not pgid:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-pgid, os.WNOHANG)  # reap our own child so the group can vanish
        time.sleep(0.3)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    _pid_file(s, name).unlink(missing_ok=True)
    print(f"  {name}: stopped (process group {pgid})")
    return True


def airflow(s: Settings, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """One `airflow ...` CLI call with the service environment; on failure show its output and what to do."""
    proc = subprocess.run([str(BIN / "airflow"), *args], env=service_env(s), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise SystemExit(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return proc


def wait_http(url: str, what: str, pgid: int, log: Path, timeout_s: float = 240) -> None:
    """Wait until url answers 2xx/3xx; fail early (with the log's tail) if the service died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (localhost only)
                if response.status < 400:
                    return
        except OSError:
            pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            raise SystemExit(f"{what} exited while starting; last lines of {log}:\n{_tail(log)}") from None
        time.sleep(1.0)
    raise SystemExit(f"{what} did not answer {url} within {timeout_s:.0f} s; see {log}")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


# --------------------------------------------------------------------------- airflow set-up


def init_airflow(s: Settings) -> None:
    """Metadata DB, the one-slot DuckDB pool, and the DAG serialized (idempotent; seconds when done before)."""
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    print(f"Airflow home {s.airflow_home}: db migrate, pool {s.pool} (1 slot), serialize {DAG_ID}")
    airflow(s, "db", "migrate")
    airflow(s, "pools", "set", s.pool, "1", "one DuckDB writer at a time")
    airflow(s, "dags", "reserialize")


# --------------------------------------------------------------------------- the REST API


@functools.cache  # one token per api-server for the whole backfill
def api_token(s: Settings) -> str:
    """A JWT for the public REST API (simple auth manager: `POST /auth/token` with the generated password)."""
    path = s.airflow_home / "simple_auth_manager_passwords.json.generated"
    user, password = next(iter(json.loads(path.read_text()).items()))
    request = urllib.request.Request(
        f"http://localhost:{s.airflow_port}/auth/token", method="POST",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (localhost only)
        return json.loads(response.read())["access_token"]


# what a REST call raises when the API cannot be used: OSError (no answer; urllib's URLError and HTTPError,
# e.g. credentials refused under another auth manager), ValueError / KeyError / StopIteration (no
# generated password, an unexpected answer)
API_ERRORS = (OSError, ValueError, KeyError, StopIteration)


def api(s: Settings, method: str, path: str, body: dict | None = None) -> dict:
    """One call to the api-server's public REST API (`/api/v2/<path>`) with the cached token; its JSON.

    Raises API_ERRORS (the caller falls back to the Airflow CLI) after forgetting the token: an expired or
    refused one is fetched again by the next call.
    """
    try:
        request = urllib.request.Request(
            f"http://localhost:{s.airflow_port}/api/v2/{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {api_token(s)}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (localhost only)
            return json.loads(response.read() or b"{}")
    except API_ERRORS:
        api_token.cache_clear()
        raise


def is_paused(s: Settings) -> bool | None:
    """The DAG's paused flag, or None when it is not in the metadata DB (not parsed yet, or import errors).

    `GET /api/v2/dags/{dag_id}` while the api-server answers, else `airflow dags details`.
    """
    with contextlib.suppress(*API_ERRORS):
        return bool(api(s, "GET", f"dags/{DAG_ID}")["is_paused"])
    details = json_lines(airflow(s, "dags", "details", DAG_ID, "-o", "json", check=False).stdout)
    return str(details[0].get("is_paused")).lower() == "true" if details else None  # the CLI prints "True"


def set_paused(s: Settings, paused: bool) -> None:
    """Pause or unpause the DAG: `PATCH /api/v2/dags/{dag_id}`, else `airflow dags pause|unpause`.

    The scheduler only runs the runs of unpaused DAGs, backfills included. A DAG that failed to import
    is not in the metadata DB (the API answers 404, the CLI fails too); unpausing then says why instead of
    `Dag not found`.
    """
    with contextlib.suppress(*API_ERRORS):
        api(s, "PATCH", f"dags/{DAG_ID}", {"is_paused": paused})
        return
    if airflow(s, "dags", "pause" if paused else "unpause", DAG_ID, check=False).returncode == 0 or paused:
        return
    errors = airflow(s, "dags", "list-import-errors", check=False).stdout
    raise SystemExit(f"{DAG_ID} is not in the metadata DB; import errors (fix them, then rerun):\n{errors[-3000:]}")


ALREADY_RUNNING = "a backfill of this DAG is already running: waiting for its runs instead"
NO_RUNS_HINT = "every date already has a run: use REPROCESS=completed to run them again"


def create_backfill(s: Settings, start: str, end: str, reprocess: str) -> None:
    """Queue one run per ds in [start, end], at most one running at a time.

    `POST /api/v2/backfills` while the api-server answers, else `airflow backfill create` (a fresh Airflow
    process). A backfill of this DAG that is still running is waited for instead of failing.
    """
    body = {"dag_id": DAG_ID, "from_date": f"{start}T00:00:00Z", "to_date": f"{end}T00:00:00Z",
            "max_active_runs": 1, "reprocess_behavior": reprocess}
    try:
        created = api(s, "POST", "backfills", body)
        print(f"backfill {created.get('id')} created: POST /api/v2/backfills {json.dumps(body)}")
        return
    except urllib.error.HTTPError as exc:  # from the backfill endpoint (its verdict) or the token route
        verdict = exc.url.endswith("/backfills")
        detail = exc.read().decode(errors="replace")
        if verdict and exc.code == 409:
            print(ALREADY_RUNNING)
            return
        if verdict and exc.code in (400, 404, 422):  # the request itself was refused
            hint = NO_RUNS_HINT if "No runs to create" in detail else f"the api-server answered {exc.code}"
            raise SystemExit(f"the backfill was not created: {hint}\n{detail[-1500:]}") from None
        # anything else (e.g. no token route under another auth manager): the CLI below
    except API_ERRORS:
        pass
    cli = ["backfill", "create", "--dag-id", DAG_ID, "--from-date", start, "--to-date", end,
           "--max-active-runs", "1", "--reprocess-behavior", reprocess]
    print("airflow " + " ".join(cli))
    out = airflow(s, *cli, check=False)
    text = out.stdout + out.stderr
    if "AlreadyRunningBackfill" in text:
        print(ALREADY_RUNNING)
    elif out.returncode != 0:
        hint = NO_RUNS_HINT if "NoBackfillRunsToCreate" in text else "see the output above"
        raise SystemExit(f"airflow backfill create failed: {hint}\n" + "\n".join(text.splitlines()[-15:]))


def start_airflow(s: Settings, started: list[str] | None = None) -> list[str]:
    """api-server (UI + execution API for the task workers), scheduler, dag-processor.

    Appends each service it starts to `started` as soon as it runs, so a caller's cleanup can stop them
    even when a later one fails to come up.
    """
    started = [] if started is None else started
    for name in AIRFLOW_SERVICES:
        if running_pgid(s, name):
            print(f"  {name}: already running")
            continue
        argv = [str(BIN / "airflow"), name]
        if name == "api-server":
            argv += ["--host", "127.0.0.1", "--port", str(s.airflow_port), "--workers", "1"]
        start_service(s, name, argv)
        started.append(name)
        if name == "api-server":  # task processes report to its execution API: it must answer first
            wait_http(f"http://localhost:{s.airflow_port}/api/v2/monitor/health", "the Airflow api-server",
                      running_pgid(s, name) or 0, s.run_dir / "api-server.log")
    return started


def login_hint(s: Settings) -> str:
    """The simple auth manager writes generated passwords into AIRFLOW_HOME at api-server start."""
    path = s.airflow_home / "simple_auth_manager_passwords.json.generated"
    if not path.exists():
        return f"login: see {path} (written when the api-server starts)"
    users = json.loads(path.read_text())
    pairs = ", ".join(f"{user} / {password}" for user, password in users.items())
    return f"login: {pairs}   (from {path})"


# --------------------------------------------------------------------------- commands


def cmd_ui(s: Settings, _args: argparse.Namespace) -> int:
    init_airflow(s)
    start_airflow(s)
    start_service(s, "mlflow", [str(BIN / "mlflow"), "ui", "--backend-store-uri", s.tracking_uri,
                                "--host", "127.0.0.1", "--port", str(s.mlflow_port), "--workers", "1"])
    wait_http(f"http://127.0.0.1:{s.mlflow_port}/health", "mlflow ui", running_pgid(s, "mlflow") or 0,
              s.run_dir / "mlflow.log")
    print(f"\nAirflow UI  http://localhost:{s.airflow_port}   {login_hint(s)}")
    print(f"MLflow UI   http://localhost:{s.mlflow_port}     (no login; store {s.tracking_uri})")
    print(f"Warehouse   {s.home / 'warehouse' / 'recsys.duckdb'}   recsys sql \"select * from marts.recommendations "
          "limit 10\"")
    print(f"Logs        {s.run_dir}/<service>.log      stop everything: make stop")
    return 0


def json_lines(out: str) -> list[dict]:
    """The JSON list in a CLI's stdout (Airflow may print log lines and warnings before it)."""
    for line in reversed(out.splitlines()):
        if line.startswith("["):
            return json.loads(line)
    return []


def list_runs(s: Settings, start: str, end: str) -> tuple[list[dict], str]:
    """The newest run of DAG_ID per ds in [start, end], whatever its type, and how they were read.

    A backfill that reprocesses a date clears and re-queues that date's existing run, so the newest run
    per ds is the one to watch. Read from the api-server's REST API when it answers (an HTTP request);
    otherwise from `airflow dags list-runs`, a fresh Airflow process of ~5 s CPU per call, which a poll
    every few seconds would take from the tasks it watches on a 2-core machine.
    """
    try:
        runs, route = runs_from_api(s), "the REST API"
    except API_ERRORS as exc:
        runs = json_lines(airflow(s, "dags", "list-runs", DAG_ID, "-o", "json").stdout)
        route = f"`airflow dags list-runs` (the REST API: {type(exc).__name__}: {exc})"
    newest: dict[str, dict] = {}
    for run in runs:
        ds = str(run.get("logical_date") or "")[:10]
        if start <= ds <= end and str(run.get("run_after", "")) >= str(newest.get(ds, {}).get("run_after", "")):
            newest[ds] = {**run, "ds": ds}
    return [newest[ds] for ds in sorted(newest)], route


def runs_from_api(s: Settings) -> list[dict]:
    """DAG_ID's runs from `GET /api/v2/dags/{dag_id}/dagRuns`, in the CLI's field names; raises API_ERRORS."""
    runs = api(s, "GET", f"dags/{DAG_ID}/dagRuns?limit=1000")["dag_runs"]
    return [{**run, "run_id": run["dag_run_id"]} for run in runs]


def failed_tasks(s: Settings, run_id: str) -> list[str]:
    states = json_lines(airflow(s, "tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json", check=False).stdout)
    return [t["task_id"] for t in states if t.get("state") == "failed"]


def rerun_command(task_id: str, ds: str) -> str:
    """`train.din` -> `recsys train --ds D --model din` (the DAG's task ids are stage[.model])."""
    stage, _, model = task_id.partition(".")
    return f"recsys {stage} --ds {ds}" + (f" --model {model}" if model else "")


def task_log(s: Settings, run_id: str, task_id: str) -> Path:
    """The newest attempt's log of a task (Airflow's default log layout)."""
    folder = s.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    attempts = sorted(folder.glob("attempt=*.log"), key=lambda p: p.stat().st_mtime)
    return attempts[-1] if attempts else folder


def wait_for_runs(s: Settings, start: str, end: str, expected: int, timeout_s: float, poll_s: float) -> list[dict]:
    """Poll until `expected` backfill runs are terminal; print every state change as it happens."""
    t0, seen, runs, last_route = time.monotonic(), {}, [], ""
    while time.monotonic() - t0 < timeout_s:
        runs, route = list_runs(s, start, end)
        if route != last_route:  # say how the runs are read, and when that changes
            last_route = route
            print(f"  [{time.monotonic() - t0:6.0f} s] watching the runs through {route}", flush=True)
        for run in runs:
            if seen.get(run["ds"]) != run["state"]:
                seen[run["ds"]] = run["state"]
                print(f"  [{time.monotonic() - t0:6.0f} s] ds={run['ds']} {run['state']}", flush=True)
        if len(runs) >= expected and all(r["state"] in TERMINAL for r in runs):
            return runs
        time.sleep(poll_s)
    raise TimeoutError(f"backfill {start}..{end} not finished after {timeout_s:.0f} s "
                       f"(states: {seen}); it keeps running: watch it in the UI or rerun with a larger --timeout")


def expected_runs(start: str, end: str) -> int:
    from datetime import date

    return (date.fromisoformat(end) - date.fromisoformat(start)).days + 1


def cmd_backfill(s: Settings, args: argparse.Namespace) -> int:
    start, end = args.start, args.end
    if not start or not end or end < start:
        raise SystemExit("usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD (END >= START)")
    if start < s.start_date or (s.end_date and end > s.end_date):
        raise SystemExit(f"{start}..{end} is outside the DAG's dates {s.start_date}..{s.end_date or ''}: Airflow "
                         "creates no runs there; set airflow.start_date / airflow.end_date in the config (or "
                         "RECSYS_START_DATE / RECSYS_END_DATE) to cover them")
    init_airflow(s)
    started: list[str] = []
    unpaused = False  # by this command, so paused again at the end: the schedule is left as it was
    try:
        start_airflow(s, started)
        if is_paused(s) is not False:  # new DAGs start paused; asked through the api-server now it answers
            set_paused(s, False)
            unpaused = True
        if not s.end_date:
            print("note: airflow.end_date is not set, so while the DAG is unpaused the scheduler also runs the "
                  "latest day (yesterday); for a historical data set set airflow.end_date (or RECSYS_END_DATE) "
                  "to your last landing day")
        create_backfill(s, start, end, args.reprocess)
        runs = wait_for_runs(s, start, end, expected_runs(start, end), args.timeout, args.poll)
    finally:
        if unpaused:
            set_paused(s, True)
        if not args.keep_running:
            for name in reversed(started):  # leave running only what was running before
                stop_service(s, name)
    return report(s, runs)


def report(s: Settings, runs: list[dict]) -> int:
    print(f"\n{'ds':<12}{'state':<10}run_id")
    failures = 0
    for run in runs:
        print(f"{run['ds']:<12}{run['state']:<10}{run['run_id']}")
        if run["state"] != "success":
            failures += 1
            for task_id in failed_tasks(s, run["run_id"]) or ["?"]:
                print(f"    failed: {task_id}   log: {task_log(s, run['run_id'], task_id)}\n"
                      f"      fix the cause, then clear the task in the UI, rerun the dates with "
                      f"`make backfill START={run['ds']} END={run['ds']}`, or run the stage alone: "
                      f"`{rerun_command(task_id, run['ds'])}`")
    print(f"{len(runs) - failures} of {len(runs)} runs succeeded")
    return 1 if failures else 0


def cmd_stop(s: Settings, _args: argparse.Namespace) -> int:
    stopped = [name for name in ("mlflow", *reversed(AIRFLOW_SERVICES)) if stop_service(s, name)]
    if not stopped:
        print(f"nothing to stop (no live pid files in {s.run_dir})")
    return 0


def cmd_status(s: Settings, _args: argparse.Namespace) -> int:
    for name in (*AIRFLOW_SERVICES, "mlflow"):
        pgid = running_pgid(s, name)
        print(f"{name:<14}{'running, process group ' + str(pgid) if pgid else 'stopped'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ui", help="start Airflow (api-server, scheduler, dag-processor) and the MLflow UI")
    bf = sub.add_parser("backfill", help="backfill START..END through the scheduler and wait for the runs")
    bf.add_argument("--start", required=True)
    bf.add_argument("--end", required=True)
    bf.add_argument("--reprocess", choices=["none", "failed", "completed"], default="failed",
                    help="dates that already have a run: none = skip, failed = rerun failed, completed = rerun all")
    bf.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the runs")
    bf.add_argument("--poll", type=float, default=10.0, help="seconds between state checks")
    bf.add_argument("--keep-running", action="store_true", help="leave the Airflow services it started running")
    sub.add_parser("stop", help="stop every service started by ui or backfill (by process group)")
    sub.add_parser("status", help="which services run")
    args = parser.parse_args(argv)
    s = settings()
    handlers = {"ui": cmd_ui, "backfill": cmd_backfill, "stop": cmd_stop, "status": cmd_status}
    # SIGTERM (e.g. a test's cleanup) unwinds like Ctrl-C, so backfill's `finally` stops what it started
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return handlers[args.command](s, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
