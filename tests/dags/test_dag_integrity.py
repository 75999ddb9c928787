"""The DAG parses without import errors, is wiring only, and carries the settings ops rely on."""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import load_config

DAGS = Path(__file__).resolve().parents[2] / "dags"
LINEAR = ["ingest", "transform", "validate"]
AFTER_TRAIN = ["promote", "score", "evaluate"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["recsys_daily"]


@pytest.fixture(scope="module")
def module() -> dict:
    return runpy.run_path(str(DAGS / "recsys_daily.py"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"recsys_daily"}


def test_order_with_one_train_task_per_enabled_model(dag) -> None:
    models = list(dict.fromkeys(getattr(load_config().train, "models", None) or [load_config().train.model]))
    trains = [f"train.{m}" for m in models]
    assert sorted(dag.task_ids) == sorted(LINEAR + trains + AFTER_TRAIN)
    for upstream, downstream in zip(LINEAR, LINEAR[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    for t in trains:
        assert dag.get_task(t).upstream_task_ids == {"validate"}
    assert dag.get_task("promote").upstream_task_ids == set(trains)  # promote waits for every model
    assert dag.get_task("score").upstream_task_ids == {"promote"}
    assert dag.get_task("evaluate").upstream_task_ids == {"score"}


def test_retries_backoff_pool_callback_and_tags(dag) -> None:
    cfg = load_config()
    assert dag.tags and "recsys" in dag.tags
    assert dag.max_active_runs == 1
    for t in dag.tasks:
        assert t.retries == cfg.airflow.retries >= 1, t.task_id
        assert t.retry_exponential_backoff > 1, t.task_id  # a multiplier in Airflow 3.3: >1 means backoff
        assert t.max_retry_delay.total_seconds() == cfg.airflow.max_retry_delay_seconds, t.task_id
        assert t.pool == cfg.airflow.pool == "recsys_duckdb", t.task_id  # one DuckDB writer at a time
        assert t.on_failure_callback, t.task_id


def test_the_run_for_a_day_starts_after_that_day(dag) -> None:
    """Data intervals: the run of ds=D covers [D, D+1) and is due at D+1 00:00 (a plain cron would run at D)."""
    import pendulum
    from airflow.timetables.interval import CronDataIntervalTimetable  # the scheduler's side of the SDK class

    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    timetable = CronDataIntervalTimetable(dag.timetable.expression, dag.timetable.timezone)
    info = timetable.next_dagrun_info(last_automated_data_interval=None,
                                          restriction=_restriction(pendulum.datetime(2024, 1, 1, tz="UTC")))
    assert info.data_interval.start == pendulum.datetime(2024, 1, 1, tz="UTC")
    assert info.run_after == pendulum.datetime(2024, 1, 2, tz="UTC")


def _restriction(earliest):
    from airflow.timetables.base import TimeRestriction

    return TimeRestriction(earliest=earliest, latest=None, catchup=True)


def test_writers_declare_their_tables_as_assets(dag) -> None:
    outlets = {t.task_id: {a.name for a in t.outlets} for t in dag.tasks}
    assert {"raw.behaviors", "raw.rejected_rows"} <= outlets["ingest"]
    assert "marts.training_examples" in outlets["transform"]
    assert outlets["score"] == {"marts.recommendations"}
    assert outlets["evaluate"] == {"marts.ranking_metrics"}
    uris = {a.uri for t in dag.tasks for a in t.outlets}
    assert "duckdb://recsys/marts/recommendations" in uris


def test_failure_callback_names_ds_stage_and_rerun_command(module, caplog) -> None:
    class TI:
        task_id, try_number = "train.dien", 3

    with caplog.at_level(logging.ERROR, logger="recsys"):
        module["log_failure"]({"task_instance": TI(), "ds": "2024-01-02", "exception": ValueError("bad rows")})
    message = caplog.records[-1].getMessage()
    assert "ds=2024-01-02" in message and "stage=train.dien" in message and "bad rows" in message
    assert "recsys train --ds 2024-01-02 --model dien" in message
    assert module["rerun_command"]("score", "2024-01-05") == "recsys score --ds 2024-01-05"


def _parse_in_subprocess(env: dict[str, str]) -> dict:
    code = (
        "import json, runpy, sys; ns = runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('torch', 'mlflow', 'great_expectations', 'dbt', 'pandas', 'duckdb') "
        "if m in sys.modules]; "
        "from airflow.dag_processing.dagbag import DagBag; "
        "d = DagBag(dag_folder=sys.argv[1]).dags['recsys_daily']; "
        "end = d.end_date.isoformat() if d.end_date else None; "
        "print(json.dumps({'heavy': heavy, 'start': d.start_date.isoformat(), 'end': end, 'catchup': d.catchup, "
        "'retries': d.tasks[0].retries, 'tasks': sorted(d.task_ids)}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(DAGS / "recsys_daily.py")], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parsing_imports_nothing_heavy() -> None:
    assert _parse_in_subprocess({})["heavy"] == []


def test_schedule_start_catchup_and_models_come_from_config(tmp_path: Path) -> None:
    cfg_file = tmp_path / "recsys.yaml"
    cfg_file.write_text("train:\n  models: [din, dien]\n"
                        "airflow:\n  start_date: 2023-06-01\n  end_date: 2023-06-30\n  catchup: true\n"
                        "  retries: 4\n")
    env = {"RECSYS_CONFIG": str(cfg_file), "RECSYS_START_DATE": "", "RECSYS_END_DATE": "", "RECSYS_CATCHUP": ""}
    parsed = _parse_in_subprocess(env)
    assert parsed["start"].startswith("2023-06-01") and parsed["catchup"] is True and parsed["retries"] == 4
    assert parsed["end"].startswith("2023-06-30")
    assert {"train.din", "train.dien"} <= set(parsed["tasks"]) and "train.base" not in parsed["tasks"]
    # docker-compose's variables still win over the file
    parsed = _parse_in_subprocess({**env, "RECSYS_START_DATE": "2022-02-02", "RECSYS_CATCHUP": "false"})
    assert parsed["start"].startswith("2022-02-02") and parsed["catchup"] is False
