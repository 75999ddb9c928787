"""The DAG parses without import errors, is wiring only, and carries the settings ops rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"recsys_daily"}


def test_tasks_order_retries_pool_and_tags(dagbag) -> None:
    dag = dagbag.dags["recsys_daily"]
    assert dag.tags and "recsys" in dag.tags
    assert dag.max_active_runs == 1
    order = ["ingest", "transform", "validate", "train", "promote", "score", "evaluate"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    for t in dag.tasks:
        assert t.retries >= 2, t.task_id
        assert t.pool == "recsys_duckdb", t.task_id  # one DuckDB writer at a time
        assert t.on_failure_callback, t.task_id


def test_parsing_imports_nothing_heavy() -> None:
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('torch', 'mlflow', 'great_expectations', 'dbt', 'pandas', 'duckdb') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(DAGS / "recsys_daily.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
