"""`make backfill` for real: a date through a running scheduler (api-server, scheduler, dag-processor).

One date shows what only a scheduler does (a run queued by `POST /api/v2/backfills`, run task by task in
fresh processes under the one-slot pool, its state in the metadata DB); each further date would add about
50 s of the same tasks. Consecutive dates, and DAY2 measuring DAY1's recommendations, are tested without
a scheduler (tests/reliability, `recsys run`), and `make demo` runs four dates through `airflow dags test`.

`ops/airflow_ops.py backfill` starts the services in their own process groups, runs
`airflow backfill create`, waits for the runs and stops what it started. Whatever happens, the fixture
kills every process group it or the script started before the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest
import yaml

from recsys.data.synth import synthesize

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAY1 = "2024-01-01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group, SIGKILL it if it outlives grace_s."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # raises ProcessLookupError once the group is gone
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)


def tiny_config(home: Path) -> Path:
    """The repository config with a one-epoch DIN, no retries, and end_date so unpausing adds no extra run."""
    raw = yaml.safe_load((REPO / "conf" / "recsys.yaml").read_text())
    raw["train"].update(epochs=1, batch_size=128)
    raw["train"]["models"] = ["din"]
    raw["score"]["top_k"] = 20
    raw["airflow"].update(end_date=DAY1, retries=0)
    path = home / "recsys.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def backfill(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("backfill_home")
    env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_CONFIG": str(tiny_config(home)),
           "AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW_PORT": str(free_port()),
           "MLFLOW_PORT": str(free_port())}
    synthesize(home / "landing", days=1, users=100, items=150, seed=5, start=date(2024, 1, 1))
    argv = [sys.executable, str(REPO / "ops" / "airflow_ops.py"), "backfill", "--start", DAY1, "--end", DAY1,
            "--poll", "3", "--timeout", "900"]
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=1200)
        services_left = sorted(p.stem for p in (home / "run").glob("*.pid"))
        yield {"rc": proc.returncode, "output": output, "home": home, "env": env, "services_left": services_left}
    finally:
        kill_group(proc.pid)  # the script itself (and anything it spawned in its own group)
        for pid_file in (home / "run").glob("*.pid"):  # services: each in its own session
            with contextlib.suppress(ValueError):
                kill_group(int(pid_file.read_text().strip()))


def test_backfill_reports_a_successful_run(backfill) -> None:
    out = backfill["output"]
    assert backfill["rc"] == 0, out[-4000:]
    assert "1 of 1 runs succeeded" in out, out[-4000:]
    assert "created: POST /api/v2/backfills" in out  # queued, (un)paused and watched through the api-server
    assert "watching the runs through the REST API" in out  # the api-server's token route works, no CLI polls
    assert backfill["services_left"] == []  # it stopped the services it started


def test_airflow_metadata_holds_the_successful_backfill_run(backfill) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "list-runs", "recsys_daily",
                           "-o", "json"], env=backfill["env"], capture_output=True, text=True, timeout=300)
    runs = json.loads([line for line in proc.stdout.splitlines() if line.startswith("[")][-1])
    by_ds = {r["logical_date"][:10]: r for r in runs}
    assert set(by_ds) == {DAY1}  # end_date: unpausing added no run for today
    assert all(r["state"] == "success" and r["run_id"].startswith("backfill__") for r in by_ds.values())
    details = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "details", "recsys_daily",
                              "-o", "json"], env=backfill["env"], capture_output=True, text=True, timeout=300)
    dag = json.loads([line for line in details.stdout.splitlines() if line.startswith("[")][-1])[0]
    assert str(dag["is_paused"]) == "True"  # paused before the backfill (new DAGs are), paused again after it


def test_warehouse_holds_the_date(backfill) -> None:
    con = duckdb.connect(str(backfill["home"] / "warehouse" / "recsys.duckdb"), read_only=True)
    try:
        for table in ("raw.behaviors", "marts.training_examples", "marts.recommendations",
                      "marts.model_promotions"):
            days = [str(d) for (d,) in con.execute(f"SELECT DISTINCT ds FROM {table} ORDER BY 1").fetchall()]
            assert days == [DAY1], table
        # the first date has no earlier recommendations to measure
        assert con.execute("SELECT count(*) FROM marts.ranking_metrics").fetchone()[0] == 0
    finally:
        con.close()
