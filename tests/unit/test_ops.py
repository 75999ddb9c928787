"""ops/airflow_ops.py without Airflow: process groups start and stop whole, CLI output parsing, hints."""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import os
import runpy
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPS = runpy.run_path(str(REPO / "ops" / "airflow_ops.py"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def settings(tmp_path: Path):
    return OPS["Settings"](home=tmp_path, airflow_home=tmp_path / "airflow", run_dir=tmp_path / "run",
                           tracking_uri="sqlite:///x.db", pool="recsys_duckdb", airflow_port=18999,
                           mlflow_port=15999)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    return "Z" not in subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout


def test_stop_kills_the_whole_process_group(settings) -> None:
    # a parent that starts a child: stopping the service must take the child too
    child_file = settings.home / "child.pid"
    pgid = OPS["start_service"](settings, "demo", ["bash", "-c", f"sleep 300 & echo $! > {child_file}; wait"])
    try:
        deadline = time.monotonic() + 30
        while not child_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(child_file.read_text())
        assert OPS["running_pgid"](settings, "demo") == pgid
        assert os.getpgid(child) == pgid  # the child is in the service's group
        assert OPS["stop_service"](settings, "demo", grace_s=10)
        assert not _alive(pgid) and not _alive(child)
        assert OPS["running_pgid"](settings, "demo") is None
        assert not (settings.run_dir / "demo.pid").exists()
        assert OPS["stop_service"](settings, "demo") is False  # stopping twice is fine
    finally:
        OPS["stop_service"](settings, "demo", grace_s=1)


def test_stale_pid_file_is_not_a_running_service(settings) -> None:
    settings.run_dir.mkdir(parents=True)
    proc = subprocess.Popen(["true"])
    proc.wait()
    (settings.run_dir / "scheduler.pid").write_text(str(proc.pid))
    assert OPS["running_pgid"](settings, "scheduler") is None
    assert not (settings.run_dir / "scheduler.pid").exists()


def test_json_after_log_lines_and_newest_run_per_ds(settings, monkeypatch) -> None:
    out = ('2026-01-01T00:00:00Z [warning] Could not import graphviz.\n'
           '[{"run_id": "backfill__2024-01-02T00:00:00+00:00", "state": "failed", '
           '"run_after": "2024-01-02T00:00:00+00:00", "logical_date": "2024-01-01T00:00:00+00:00"}, '
           '{"run_id": "scheduled__2024-01-03", "state": "success", '
           '"run_after": "2024-01-03T00:00:00+00:00", "logical_date": "2024-01-02T00:00:00+00:00"}, '
           '{"run_id": "x", "state": "success", "run_after": "2024-01-09T00:00:00+00:00", '
           '"logical_date": "2024-01-08T00:00:00+00:00"}]\n')
    assert len(OPS["json_lines"](out)) == 3
    monkeypatch.setitem(OPS["list_runs"].__globals__, "airflow",
                        lambda *_a, **_k: subprocess.CompletedProcess([], 0, stdout=out, stderr=""))
    settings = dataclasses.replace(settings, airflow_port=free_port())  # nothing answers: the CLI route
    runs, route = OPS["list_runs"](settings, "2024-01-01", "2024-01-02")
    assert [(r["ds"], r["state"]) for r in runs] == [("2024-01-01", "failed"), ("2024-01-02", "success")]
    assert route.startswith("`airflow dags list-runs`")


class FakeApiServer(http.server.BaseHTTPRequestHandler):
    """The endpoints of Airflow's api-server that ops/airflow_ops.py uses, with the simple auth manager's
    rules: a token for the generated password, the DAG's runs and paused flag, backfill creation (whose
    answer is `backfill_reply`). Every authorised call is recorded in `calls`."""

    tokens_issued = 0
    calls: list[tuple[str, str, dict | None]] = []
    paused = True
    backfill_reply: tuple[int, dict] = (200, {"id": 7})
    token_status = 401  # the answer to wrong credentials

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/auth/token":
            ok = body == {"username": "admin", "password": "pw"}
            FakeApiServer.tokens_issued += ok
            if not ok:
                return self._reply(FakeApiServer.token_status, {"detail": "Invalid credentials"})
            return self._reply(201, {"access_token": "jwt"})
        if self._authorised("POST", body) and self.path == "/api/v2/backfills":
            return self._reply(*FakeApiServer.backfill_reply)
        return self._reply(404, {"detail": "Not Found"})

    def do_PATCH(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self._authorised("PATCH", body) and self.path == "/api/v2/dags/recsys_daily":
            FakeApiServer.paused = body["is_paused"]
            return self._reply(200, {"dag_id": "recsys_daily", "is_paused": FakeApiServer.paused})
        return self._reply(404, {"detail": "Not Found"})

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorised("GET", None):
            return self._reply(401, {"detail": "Not authenticated"})
        if self.path == "/api/v2/dags/recsys_daily":
            return self._reply(200, {"dag_id": "recsys_daily", "is_paused": FakeApiServer.paused})
        runs = [{"dag_run_id": "backfill__2024-01-01T00:00:00+00:00", "state": "running",
                 "logical_date": "2024-01-01T00:00:00Z", "run_after": "2024-01-01T00:00:00Z"},
                {"dag_run_id": "scheduled__2024-01-05", "state": "success",
                 "logical_date": "2024-01-05T00:00:00Z", "run_after": "2024-01-06T00:00:00Z"}]
        ok = self.path == "/api/v2/dags/recsys_daily/dagRuns?limit=1000"
        return self._reply(200 if ok else 404, {"dag_runs": runs, "total_entries": 2})

    def _authorised(self, method: str, body: dict | None) -> bool:
        ok = self.headers.get("Authorization") == "Bearer jwt"
        if ok:
            FakeApiServer.calls.append((method, self.path, body))
        return ok

    def _reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture()
def api_server(settings):
    """A FakeApiServer on a free port; settings pointing at it, with the generated password in place."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeApiServer.calls, FakeApiServer.paused, FakeApiServer.backfill_reply = [], True, (200, {"id": 7})
    OPS["api_token"].cache_clear()
    settings = dataclasses.replace(settings, airflow_port=server.server_address[1])
    settings.airflow_home.mkdir()
    (settings.airflow_home / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "pw"}')
    try:
        yield settings
    finally:
        server.shutdown()
        OPS["api_token"].cache_clear()


def test_runs_come_from_the_rest_api_with_a_token_of_the_generated_password(api_server, monkeypatch) -> None:
    secrets = api_server.airflow_home / "simple_auth_manager_passwords.json.generated"
    secrets.write_text('{"admin": "wrong"}')
    with pytest.raises(OSError, match="401"):  # rejected credentials: list_runs falls back to the CLI
        OPS["runs_from_api"](api_server)
    monkeypatch.setitem(OPS["list_runs"].__globals__, "airflow", lambda *_a, **_k: pytest.fail("CLI called"))
    secrets.write_text('{"admin": "pw"}')
    FakeApiServer.tokens_issued = 0
    for _ in range(2):
        runs, route = OPS["list_runs"](api_server, "2024-01-01", "2024-01-02")
        assert [(r["ds"], r["state"], r["run_id"]) for r in runs] == \
            [("2024-01-01", "running", "backfill__2024-01-01T00:00:00+00:00")]
        assert route == "the REST API"
    assert FakeApiServer.tokens_issued == 1  # the token is reused across polls


def test_backfill_control_goes_through_the_rest_api(api_server, monkeypatch, capsys) -> None:
    monkeypatch.setitem(OPS["create_backfill"].__globals__, "airflow", lambda *_a, **_k: pytest.fail("CLI called"))
    assert OPS["is_paused"](api_server) is True
    OPS["set_paused"](api_server, False)
    assert OPS["is_paused"](api_server) is False
    OPS["create_backfill"](api_server, "2024-01-01", "2024-01-03", "failed")
    assert ("POST", "/api/v2/backfills", {"dag_id": "recsys_daily", "from_date": "2024-01-01T00:00:00Z",
            "to_date": "2024-01-03T00:00:00Z", "max_active_runs": 1, "reprocess_behavior": "failed"}) \
        in FakeApiServer.calls
    assert "backfill 7 created" in capsys.readouterr().out
    FakeApiServer.backfill_reply = (409, {"detail": "There is already a running backfill for dag recsys_daily"})
    OPS["create_backfill"](api_server, "2024-01-01", "2024-01-03", "failed")
    assert "already running: waiting for its runs" in capsys.readouterr().out
    FakeApiServer.backfill_reply = (422, {"detail": "No runs to create for Dag recsys_daily in the range [...]"})
    with pytest.raises(SystemExit, match="REPROCESS=completed"):
        OPS["create_backfill"](api_server, "2024-01-01", "2024-01-03", "failed")
    assert FakeApiServer.tokens_issued >= 1 and all(path.startswith("/api/v2/") for _, path, _ in FakeApiServer.calls)


def test_backfill_control_falls_back_to_the_cli_when_the_api_refuses(api_server, monkeypatch) -> None:
    (api_server.airflow_home / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "other"}')
    cli: list[tuple[str, ...]] = []

    def fake_airflow(_s, *args: str, **_k) -> subprocess.CompletedProcess:
        cli.append(args)
        return subprocess.CompletedProcess(args, 0, stdout='[{"is_paused": "False"}]\n', stderr="")

    monkeypatch.setitem(OPS["create_backfill"].__globals__, "airflow", fake_airflow)
    assert OPS["is_paused"](api_server) is False
    OPS["set_paused"](api_server, True)
    OPS["create_backfill"](api_server, "2024-01-01", "2024-01-02", "none")
    # an auth manager without the token route (404 there) is no verdict on the backfill either
    monkeypatch.setattr(FakeApiServer, "token_status", 404)
    OPS["create_backfill"](api_server, "2024-01-01", "2024-01-02", "none")
    assert [a[:2] for a in cli] == [("dags", "details"), ("dags", "pause"), ("backfill", "create"),
                                    ("backfill", "create")]
    assert FakeApiServer.calls == []  # the refused token never reached an endpoint


@pytest.mark.parametrize(("paused_before", "start_fails", "patches"), [
    (True, False, [False, True]),  # unpaused for the backfill, paused again
    (False, False, []),            # a scheduled (unpaused) DAG is left alone
    (True, True, []),              # the services never came up: nothing was unpaused, nothing to undo
])
def test_backfill_leaves_the_paused_flag_as_it_found_it(api_server, monkeypatch, paused_before: bool,
                                                        start_fails: bool, patches: list[bool]) -> None:
    FakeApiServer.paused = paused_before

    def start(*_a) -> None:
        if start_fails:
            raise SystemExit("the Airflow api-server did not answer")

    env = OPS["cmd_backfill"].__globals__
    for name, stub in {"init_airflow": lambda _s: None, "start_airflow": start,
                       "airflow": lambda *_a, **_k: pytest.fail("CLI called"),
                       "wait_for_runs": lambda *_a: [{"ds": "2024-01-01", "state": "success", "run_id": "r"}]}.items():
        monkeypatch.setitem(env, name, stub)
    args = argparse.Namespace(start="2024-01-01", end="2024-01-01", reprocess="failed", timeout=10, poll=1,
                              keep_running=True)
    if start_fails:
        with pytest.raises(SystemExit, match="did not answer"):
            OPS["cmd_backfill"](api_server, args)
    else:
        assert OPS["cmd_backfill"](api_server, args) == 0
    assert [body["is_paused"] for method, _, body in FakeApiServer.calls if method == "PATCH"] == patches
    assert FakeApiServer.paused is paused_before


def test_rerun_hint_and_date_count() -> None:
    assert OPS["rerun_command"]("train.dsin", "2024-01-02") == "recsys train --ds 2024-01-02 --model dsin"
    assert OPS["rerun_command"]("evaluate", "2024-01-02") == "recsys evaluate --ds 2024-01-02"
    assert OPS["expected_runs"]("2024-01-30", "2024-02-02") == 4


def test_services_get_the_ops_environment(settings, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "8")  # what the caller exported wins
    env = OPS["service_env"](settings)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "8"
    assert env["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] == "False"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:18999/execution/"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
