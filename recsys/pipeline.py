"""The stages in order, callable one at a time (Airflow tasks) or for a range of dates (`recsys run`).

Both front doors call `run_stage`, so a task that failed in Airflow can be rerun from the shell with
exactly the same code path: `recsys <stage> --ds D`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from datetime import date, timedelta
from typing import Any

from recsys.config import Config, load_config
from recsys.ingest import validate_ds
from recsys.warehouse import writer_lock

log = logging.getLogger(__name__)

STAGES = ("ingest", "transform", "validate", "train", "promote", "score", "evaluate")


def _stage_function(name: str) -> Callable[..., Any]:
    """Import a stage lazily: torch, dbt and GX load only when their stage runs."""
    if name == "ingest":
        from recsys.ingest import ingest as fn
    elif name == "transform":
        from recsys.transform import build as fn
    elif name == "validate":
        from recsys.validate import validate as fn
    elif name == "train":
        from recsys.train import train as fn
    elif name == "promote":
        from recsys.promote import promote as fn
    elif name == "score":
        from recsys.score import score as fn
    elif name == "evaluate":
        from recsys.evaluate import evaluate as fn
    else:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return fn


def summarize(result: Any) -> dict[str, Any]:
    """A small JSON-able summary of a stage result (what Airflow keeps in XCom: references, not data)."""
    if is_dataclass(result) and not isinstance(result, type):
        raw = asdict(result)
    elif isinstance(result, dict):
        raw = result
    else:
        raw = {"result": result}
    return json.loads(json.dumps(raw, default=str))  # paths, dates, numpy scalars -> plain JSON


def run_stage(name: str, ds: str, cfg: Config | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one stage for ds and return its summary."""
    cfg = cfg or load_config()
    ds = validate_ds(ds)
    fn = _stage_function(name)
    started = time.monotonic()
    with writer_lock(cfg):  # one writing process at a time (two `recsys run`, Airflow + shell, ...)
        log.info("stage %s ds=%s", name, ds)
        summary = summarize(fn(cfg, ds, **kwargs))
    # from the lock request on: waiting for another writer and refreshing the read snapshot count too
    log.info("finished %s ds=%s in %.1f s", name, ds, time.monotonic() - started)
    return summary


def dates(start: str, end: str) -> Iterator[str]:
    """Every ds from start to end inclusive."""
    day, last = date.fromisoformat(validate_ds(start)), date.fromisoformat(validate_ds(end))
    if last < day:
        raise ValueError(f"end {end} is before start {start}")
    while day <= last:
        yield day.isoformat()
        day += timedelta(days=1)


def run_day(cfg: Config, ds: str, on_stage: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Every stage for one ds, in the DAG's order (train once per enabled model, like the DAG's train
    tasks); stops at the first failure (it raises). Keys: stage names, and `train.<model>`."""
    results = {}
    for name in STAGES:
        runs = ([(f"train.{m}", {"model_name": m}) for m in dict.fromkeys(cfg.train.models)]
                if name == "train" else [(name, {})])
        for key, kwargs in runs:
            results[key] = run_stage(name, ds, cfg, **kwargs)
            if on_stage:
                on_stage(key, results[key])
    return results


def run_range(cfg: Config, start: str, end: str,
              on_stage: Callable[[str, dict], None] | None = None) -> dict[str, dict[str, dict]]:
    """`recsys run --start A --end B`: each date in order, every stage, without Airflow.

    The writer lock is held for the whole range, so two runs started at once run one after the other.
    """
    days = list(dates(start, end))
    with writer_lock(cfg):
        return {ds: run_day(cfg, ds, on_stage) for ds in days}
