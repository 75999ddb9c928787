"""Stage 3: Great Expectations gates on raw behaviours and the marts of one ds.

Suites are code (below), run against data frames read from DuckDB (GX 1.x's SQL datasource returns
nothing with DuckDB). A failed expectation raises `DataValidationError` listing every failure with
its observed value; the Data Docs site is rebuilt on every run and its path is logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from recsys.config import Config
from recsys.ingest import validate_ds
from recsys.warehouse import connect, table_exists

log = logging.getLogger(__name__)


class DataValidationError(RuntimeError):
    """At least one expectation failed; the message lists them with observed values."""


@dataclass(frozen=True)
class SuiteSpec:
    """One suite: the SQL that reads the ds's rows, its bound parameters and its expectations."""

    name: str
    sql: str
    params: list[Any]
    expectations: list[Any]


@dataclass
class ValidationResult:
    ds: str
    success: bool
    suites: dict[str, bool]
    failures: list[str]
    data_docs: Path | None


def _row_count_band(con: duckdb.DuckDBPyConnection, cfg: Config, table: str, ds: str) -> tuple[int, int | None]:
    """Allowed row counts for ds: at least one row, and within the configured multiples of the previous ds."""
    prev = (date.fromisoformat(ds) - timedelta(days=1)).isoformat()
    n_prev = con.execute(f"SELECT count(*) FROM {table} WHERE ds = ?", [prev]).fetchone()[0]
    if n_prev == 0:
        return 1, None
    return max(1, int(n_prev * cfg.validate.min_row_ratio)), int(n_prev * cfg.validate.max_row_ratio) + 1


def _raw_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str) -> SuiteSpec:
    import great_expectations as gx

    E = gx.expectations
    lo, hi = _row_count_band(con, cfg, "raw.behaviors", ds)
    return SuiteSpec(
        "raw_behaviors",
        "SELECT user_id, item_id, behavior, "
        "timezone(?, ts::TIMESTAMPTZ)::DATE = ds AS ts_in_ds FROM raw.behaviors WHERE ds = ?",
        [cfg.ingest.day_timezone, ds],
        [
            E.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi),
            E.ExpectColumnValuesToNotBeNull(column="user_id"),
            E.ExpectColumnValuesToNotBeNull(column="item_id"),
            E.ExpectColumnValuesToBeBetween(column="user_id", min_value=0),
            E.ExpectColumnValuesToBeBetween(column="item_id", min_value=0),
            E.ExpectColumnValuesToBeInSet(column="behavior", value_set=list(cfg.ingest.behaviors)),
            # every ts is inside ds (the local day in ingest.day_timezone)
            E.ExpectColumnValuesToBeInSet(column="ts_in_ds", value_set=[True]),
        ],
    )


def _mart_suites(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str) -> list[SuiteSpec]:
    """Suites on the dbt marts that exist (validate can also run right after ingest)."""
    import great_expectations as gx

    E = gx.expectations
    suites = []
    if table_exists(con, "marts.training_examples"):
        neg = cfg.features.negatives_per_positive
        suites.append(SuiteSpec(
            "training_examples",
            "SELECT example_id, user_id, item_id, label, history_length FROM marts.training_examples "
            "WHERE ds = ?",
            [ds],
            [
                E.ExpectTableRowCountToBeBetween(min_value=1),
                E.ExpectColumnValuesToBeUnique(column="example_id"),
                E.ExpectColumnValuesToNotBeNull(column="user_id"),
                E.ExpectColumnValuesToNotBeNull(column="item_id"),
                E.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
                # one positive per neg negatives; sampling collisions may drop a few negatives
                E.ExpectColumnMeanToBeBetween(column="label", min_value=0.5 / (1 + neg),
                                              max_value=2.0 / (1 + neg)),
                E.ExpectColumnValuesToBeBetween(column="history_length", min_value=0,
                                                max_value=cfg.features.history_max_len),
            ],
        ))
    if table_exists(con, "marts.scoring_candidates"):
        suites.append(SuiteSpec(
            "scoring_candidates",
            "SELECT user_id, item_id, count(*) OVER (PARTITION BY user_id) AS per_user "
            "FROM marts.scoring_candidates WHERE ds = ?",
            [ds],
            [
                E.ExpectTableRowCountToBeBetween(min_value=1),
                E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),
                E.ExpectColumnValuesToBeBetween(column="per_user", min_value=1,
                                                max_value=cfg.features.candidates_per_user),
            ],
        ))
    return suites


def _describe(result: Any) -> str:
    """One line per failed expectation: its type, arguments and what was observed."""
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    r = result.result or {}
    observed = r.get("observed_value")
    if observed is None and "unexpected_count" in r:
        observed = (f"{r['unexpected_count']} unexpected ({r.get('unexpected_percent', 0):.2f}%), "
                    f"e.g. {r.get('partial_unexpected_list', [])[:5]}")
    return f"{cfg.type}({kwargs}): observed {observed}"


def _context(cfg: Config) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX keeps its project (suites, checkpoints, Data Docs) in <home>/gx
    cfg.paths.home.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(cfg.paths.home))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def _run_suite(ctx: Any, spec: SuiteSpec, frame: pd.DataFrame, ds: str) -> tuple[bool, list[str]]:
    import great_expectations as gx

    source = ctx.data_sources.add_or_update_pandas("recsys")
    asset = next((a for a in source.assets if a.name == spec.name), None) or \
        source.add_dataframe_asset(name=spec.name)
    batch = next((b for b in asset.batch_definitions if b.name == "ds"), None) or \
        asset.add_batch_definition_whole_dataframe("ds")
    suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=spec.name, expectations=spec.expectations))
    vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=spec.name, data=batch,
                                                                          suite=suite))
    checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=f"recsys_{spec.name}", validation_definitions=[vd],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "SUMMARY"}))
    run = checkpoint.run(batch_parameters={"dataframe": frame},
                         run_id=gx.core.run_identifier.RunIdentifier(run_name=f"{spec.name}-{ds}"))
    failures = [f"{spec.name}: {_describe(r)}" for vr in run.run_results.values()
                for r in vr.results if not r.success]
    return run.success, failures


def validate(cfg: Config, ds: str, raise_on_failure: bool = True) -> ValidationResult:
    """Run every suite for ds; raise DataValidationError listing all failures (unless told not to)."""
    ds = validate_ds(ds)
    con = connect(cfg, read_only=True)
    try:
        specs = [_raw_suite(con, cfg, ds), *_mart_suites(con, cfg, ds)]
        con.execute("SET TimeZone = 'UTC'")  # raw ts are naive UTC
        frames = {s.name: con.execute(s.sql, s.params).df() for s in specs}
    finally:
        con.close()
    ctx = _context(cfg)
    outcome, failures = {}, []
    for spec in specs:
        outcome[spec.name], failed = _run_suite(ctx, spec, frames[spec.name], ds)
        failures += failed
    sites = ctx.get_docs_sites_urls()
    docs = Path(sites[0]["site_url"].removeprefix("file://")) if sites else None
    log.info("validate ds=%s: %s; Data Docs: %s", ds, outcome, docs)
    result = ValidationResult(ds, all(outcome.values()), outcome, failures, docs)
    if raise_on_failure and not result.success:
        raise DataValidationError(f"data validation failed for ds={ds} ({len(failures)} expectations):\n  "
                                  + "\n  ".join(failures) + f"\nData Docs: {docs}")
    return result
