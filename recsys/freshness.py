"""Source freshness: `dbt source freshness` on the raw tables, with the thresholds of
`dbt_project/models/staging/__sources.yml` (how old the newest landed behaviour or snapshot may be).

Freshness compares the newest `loaded_at` with the current time, so it means something only for a live
run: ds is yesterday or today in the ingest day time zone. A backfill's sources are old by design and are
not checked (ds-level gates cover them: ingest fails an empty day, GX bands the row count and keeps every
timestamp inside ds). The transform stage checks a live ds before `dbt build`: a source past its
`error_after` fails the stage, one past `warn_after` is logged. `recsys freshness` runs the same check on
demand (for monitoring: it exits non-zero on an error), whatever the date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from recsys.config import Config
from recsys.transform import FAILED_STATUSES, TransformError, dbt_args, dbt_session, result_status

log = logging.getLogger(__name__)


class FreshnessError(TransformError):
    """A raw source is older than its `error_after`, or its freshness could not be computed (a failed
    transform stage: nothing was built)."""


@dataclass(frozen=True)
class SourceFreshness:
    """One source's freshness.

    Attributes:
        source: `raw.<table>`.
        status: dbt's verdict: pass, warn, error or runtime error.
        max_loaded_at: the newest `loaded_at_field` value (UTC, ISO), None when dbt could not read one.
        age_hours: hours from max_loaded_at to the check, None when dbt could not read one.
        message: dbt's message for a runtime error, "no rows" for an empty table ('' otherwise).
    """

    source: str
    status: str
    max_loaded_at: str | None
    age_hours: float | None
    message: str = ""

    @property
    def failed(self) -> bool:
        """Past `error_after`, or not computable (dbt's `error` / `runtime error`)."""
        return self.status in FAILED_STATUSES

    def describe(self) -> str:
        if self.age_hours is None:
            return f"{self.source}: {self.status} ({self.message or 'no loaded_at'})"
        return f"{self.source}: {self.status}, newest {self.max_loaded_at} UTC, {self.age_hours:.1f} h old"


def is_live(ds: str, cfg: Config, today: date | None = None) -> bool:
    """Whether ds is a live run's date (yesterday or today in `ingest.day_timezone`), not a backfill."""
    today = today or datetime.now(ZoneInfo(cfg.ingest.day_timezone)).date()
    return date.fromisoformat(ds) >= today - timedelta(days=1)


def check_sources(cfg: Config) -> list[SourceFreshness]:
    """Run `dbt source freshness` on the warehouse and return every source's result, in source order.

    Raises:
        FileNotFoundError: the warehouse does not exist yet (ingest creates it).
        FreshnessError: dbt could not run the check at all.
    """
    from dbt.cli.main import dbtRunner  # dbt loads only when freshness is checked

    warehouse = Path(cfg.paths.warehouse)
    if not warehouse.exists():
        raise FileNotFoundError(f"warehouse {warehouse} does not exist yet; run `recsys ingest` first")
    with dbt_session(warehouse):
        outcome = dbtRunner().invoke(dbt_args(cfg, None, command="source freshness"))
    if outcome.exception is not None:
        raise FreshnessError(f"dbt source freshness did not run: {outcome.exception}") from outcome.exception
    results = [_freshness(r) for r in getattr(outcome.result, "results", None) or []]
    return sorted(results, key=lambda r: r.source)


def _freshness(result: Any) -> SourceFreshness:
    """One dbt SourceFreshnessResult (or its runtime-error variant) as a SourceFreshness."""
    node = result.node
    status = result_status(result)
    loaded = getattr(result, "max_loaded_at", None)
    age = getattr(result, "age", None)
    message = str(getattr(result, "message", "") or "") if status == "runtime error" else ""
    if loaded is not None and loaded.year == 1:  # dbt's stand-in for max() of an empty table
        loaded, age, message = None, None, "no rows"
    if loaded is not None and loaded.tzinfo is not None:
        loaded = loaded.astimezone(UTC).replace(tzinfo=None)
    return SourceFreshness(
        source=f"{node.source_name}.{node.name}",
        status=status,
        max_loaded_at=loaded.isoformat(sep=" ", timespec="seconds") if loaded else None,
        age_hours=round(age / 3600, 2) if age is not None else None,
        message=message,
    )


def gate(cfg: Config, ds: str) -> list[SourceFreshness]:
    """The transform stage's check: for a live ds, fail on a source past its error threshold and log the
    ones past their warning threshold; for a backfill ds, check nothing and return [].

    Raises:
        FreshnessError: a source is past `error_after` or its freshness could not be computed.
    """
    if not is_live(ds, cfg):
        log.info("source freshness not checked: ds=%s is a backfill (freshness compares with today)", ds)
        return []
    results = check_sources(cfg)
    for result in results:
        if result.status == "warn":
            log.warning("source freshness ds=%s: %s", ds, result.describe())
    failed = [r for r in results if r.failed]
    if failed:
        lines = "\n".join(f"  - {r.describe()}" for r in failed)
        raise FreshnessError(f"source freshness for ds={ds} failed (thresholds in "
                             f"dbt_project/models/staging/__sources.yml):\n{lines}")
    return results
