"""recsys_daily: the nightly pipeline for one logical date (wiring only; the work lives in `recsys`).

ingest -> transform (dbt build, tests included) -> validate (GX) -> train -> promote -> score -> evaluate.
Every task writes to the one DuckDB file, so all of them share the one-slot pool `recsys_duckdb` and
the DAG runs one date at a time. Each task body is one call into `recsys.pipeline.run_stage`, the same
function behind `recsys <stage> --ds D`. Nothing heavy is imported at parse time.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task

POOL = "recsys_duckdb"
START = pendulum.parse(os.environ.get("RECSYS_START_DATE", "2024-01-01"), tz="UTC")
CATCHUP = os.environ.get("RECSYS_CATCHUP", "false").lower() == "true"

RAW = Asset("duckdb://recsys/raw/behaviors")
MARTS = Asset("duckdb://recsys/marts/training_examples")
RECOMMENDATIONS = Asset("duckdb://recsys/marts/recommendations")
METRICS = Asset("duckdb://recsys/marts/ranking_metrics")


def _log_failure(context: dict) -> None:
    """Say which ds and stage failed, and how to rerun it from the shell."""
    ti = context.get("task_instance")
    ds = context.get("ds")
    stage = getattr(ti, "task_id", "?")
    logging.getLogger("recsys").error("recsys_daily failed: ds=%s stage=%s; rerun with `recsys %s --ds %s`",
                                      ds, stage, stage, ds)


def _run(stage: str) -> dict:
    from airflow.sdk import get_current_context

    from recsys.pipeline import run_stage

    return run_stage(stage, get_current_context()["ds"])


DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "pool": POOL,
    "on_failure_callback": _log_failure,
}


@dag(schedule="@daily", start_date=START, catchup=CATCHUP, max_active_runs=1, default_args=DEFAULT_ARGS,
     tags=["recsys", "nightly"], doc_md=__doc__)
def recsys_daily() -> None:
    @task(outlets=[RAW])
    def ingest() -> dict:
        return _run("ingest")

    @task(outlets=[MARTS])
    def transform() -> dict:
        return _run("transform")

    @task
    def validate() -> dict:
        return _run("validate")

    @task
    def train() -> dict:
        return _run("train")

    @task
    def promote() -> dict:
        return _run("promote")

    @task(outlets=[RECOMMENDATIONS])
    def score() -> dict:
        return _run("score")

    @task(outlets=[METRICS])
    def evaluate() -> dict:
        return _run("evaluate")

    ingest() >> transform() >> validate() >> train() >> promote() >> score() >> evaluate()


recsys_daily()
