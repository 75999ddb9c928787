"""recsys_daily: the nightly pipeline for one logical date (wiring only; the work lives in `recsys`).

ingest -> transform (dbt build, tests included) -> validate (GX) -> train.<model> (one task per model in
`train.models`) -> promote -> score -> evaluate.

Every task writes to the one DuckDB file, so all of them share the one-slot pool (`airflow.pool`,
default `recsys_duckdb`) and the DAG runs one date at a time (max_active_runs=1). Each task body is one
call into `recsys.pipeline.run_stage`, the same function behind `recsys <stage> --ds D`.

Schedule, start date, end date, catchup and retries come from `conf/recsys.yaml` (section `airflow`);
`RECSYS_START_DATE`, `RECSYS_END_DATE` and `RECSYS_CATCHUP` override them (docker-compose sets them).
Parsing reads the YAML and nothing else: torch, dbt, GX, MLflow, pandas and DuckDB load only inside a
running task.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, TaskGroup, dag, task

from recsys.config import Config, load_config

CFG: Config = load_config()

# Assets = the warehouse tables each stage (re)writes for its ds; the UI links runs through them.
WAREHOUSE = "duckdb://recsys"
OUTLETS = {
    "ingest": ["raw.behaviors", "raw.users", "raw.items", "raw.rejected_rows", "raw.ingest_files"],
    "transform": ["marts.user_features", "marts.item_features", "marts.user_histories",
                  "marts.training_examples", "marts.training_sequences",
                  "marts.scoring_candidate_lists"],  # training_histories / scoring_candidates: views on them
    "validate": [],  # reads only (GX); a failure stops the run
    "train": ["features.vocab"],  # plus a model version in MLflow
    "promote": ["marts.model_promotions"],
    "score": ["marts.recommendations"],
    "evaluate": ["marts.ranking_metrics"],
}


def table_asset(table: str) -> Asset:
    """One warehouse table as an Airflow Asset, e.g. `duckdb://recsys/marts/recommendations`."""
    return Asset(name=table, uri=f"{WAREHOUSE}/{table.replace('.', '/')}", group="recsys_warehouse")


def train_models(cfg: Config) -> list[str]:
    """The models trained every night: `train.models`, or the single `train.model` of older configs."""
    models = getattr(cfg.train, "models", None) or [cfg.train.model]
    return list(dict.fromkeys(models))  # keep order, drop repeats


def rerun_command(task_id: str, ds: str | None) -> str:
    """The shell command that reruns a task's stage: `train.dien` -> `recsys train --ds D --model dien`."""
    stage, _, model = task_id.partition(".")
    return f"recsys {stage} --ds {ds}" + (f" --model {model}" if model else "")


def log_failure(context: dict) -> None:
    """Failure callback: say which ds and stage failed, why, and how to rerun it from the shell."""
    ti = context.get("task_instance") or context.get("ti")
    task_id = getattr(ti, "task_id", "?")
    ds = context.get("ds")
    logging.getLogger("recsys").error(
        "recsys_daily failed: ds=%s stage=%s try=%s error=%r; fix the cause, then clear the task in the UI "
        "or rerun it with `%s`", ds, task_id, getattr(ti, "try_number", "?"), context.get("exception"),
        rerun_command(task_id, ds))


def _run(stage: str, **kwargs: str) -> dict:
    from airflow.sdk import get_current_context

    from recsys.pipeline import run_stage

    return run_stage(stage, get_current_context()["ds"], **kwargs)


def _timetable(cfg: Config) -> CronDataIntervalTimetable:
    """Data intervals, not trigger times: the run for ds=D starts after D has ended (at D+1 00:00 for @daily).

    Airflow 3's plain cron schedule would start the run for D at D 00:00, before D's logs exist. The cron
    is in UTC; for a business day in a zone west of UTC (`ingest.day_timezone`), shift it, e.g. "0 8 * * *".
    """
    return CronDataIntervalTimetable(cfg.airflow.schedule, timezone="UTC")


def _start_date(cfg: Config) -> pendulum.DateTime:
    return pendulum.parse(str(os.environ.get("RECSYS_START_DATE") or cfg.airflow.start_date), tz="UTC")


def _end_date(cfg: Config) -> pendulum.DateTime | None:
    value = os.environ.get("RECSYS_END_DATE") or cfg.airflow.end_date
    return pendulum.parse(str(value), tz="UTC") if value else None


def _catchup(cfg: Config) -> bool:
    env = os.environ.get("RECSYS_CATCHUP")
    return env.lower() == "true" if env else bool(cfg.airflow.catchup)


DEFAULT_ARGS = {
    "retries": CFG.airflow.retries,
    "retry_delay": timedelta(seconds=CFG.airflow.retry_delay_seconds),
    "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3.3: 30 s, 60 s, 120 s, ...
    "max_retry_delay": timedelta(seconds=CFG.airflow.max_retry_delay_seconds),
    "pool": CFG.airflow.pool,
    "on_failure_callback": log_failure,
}


@dag(schedule=_timetable(CFG), start_date=_start_date(CFG), end_date=_end_date(CFG), catchup=_catchup(CFG),
     max_active_runs=1, default_args=DEFAULT_ARGS, tags=["recsys", "nightly"], doc_md=__doc__)
def recsys_daily() -> None:
    def stage_task(stage: str, **kwargs: str):
        outlets = [table_asset(t) for t in OUTLETS[stage]]
        task_id = kwargs.get("model_name", stage)

        @task(task_id=task_id, outlets=outlets)
        def run() -> dict:
            return _run(stage, **kwargs)

        return run()

    ingest, transform, validate = stage_task("ingest"), stage_task("transform"), stage_task("validate")
    with TaskGroup("train", tooltip="one task per model in train.models") as train:
        for model in train_models(CFG):
            stage_task("train", model_name=model)
    promote, score, evaluate = stage_task("promote"), stage_task("score"), stage_task("evaluate")
    ingest >> transform >> validate >> train >> promote >> score >> evaluate


recsys_daily()
