"""Stage 3: Great Expectations gates on raw behaviours and the marts of one ds.

Suites are code (below), run against pandas frames read from DuckDB (GX 1.x's SQL datasource returns
nothing with DuckDB). A failed expectation raises `DataValidationError` listing every failure with
its observed value and the path of the Data Docs site, which is rebuilt for this run's results.

Speed: GX hashes every frame it is given and its map expectations are pandas passes, so a frame must
hold only what the expectations need. DuckDB does the heavy lifting:
- frames carry numbers, never lists: list lengths, time offsets (days from ds) and null indicators are
  computed in SQL, and every numeric column is BIGINT / DOUBLE (GX vectorises only int64 / float64);
- raw behaviours, user_features, user_histories and item_features are validated row by row (one row per
  event / user / item); the big marts are validated per user: `training_examples` (1 + negatives rows
  per event) as one row per user with the user's example count, label rate and event day offsets,
  `training_histories` (one row per positive, its lists) with the longest and misaligned lists,
  `scoring_candidates` (up to candidates_per_user rows per user) as one row per user with
  its candidate count. Row-level keys and accepted values of these marts are dbt tests already.

Bands that need history compare with the previous ds: row counts lie within `validate.min_row_ratio` ..
`max_row_ratio` times the previous ds's, and a null rate may exceed the previous ds's by at most
`validate.max_null_rate_increase` (the first ds has no band). Sequence limits come from the feature
contract (`feature_store/specs.yaml`: max_len, max_sessions), never from constants here.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from feature_store.spec import FeatureSpec, FeatureSpecs, load_spec
from recsys.config import Config
from recsys.ingest import day_bounds, validate_ds
from recsys.warehouse import bound_memory, connect, table_exists

log = logging.getLogger(__name__)

RAW_TABLE = "raw.behaviors"
MARTS = ("user_features", "item_features", "user_histories", "training_examples", "training_histories",
         "scoring_candidates")
PROFILE_FIELDS = ("age", "gender", "occupation", "city")
CATALOGUE_FIELDS = ("category", "brand", "price")


class DataValidationError(RuntimeError):
    """At least one expectation failed; the message lists them with observed values and the Data Docs path."""

    def __init__(self, message: str, failures: list[str], data_docs: Path | None):
        super().__init__(message)
        self.failures = failures
        self.data_docs = data_docs


@dataclass(frozen=True)
class SuiteSpec:
    """One suite: the SQL that reads the ds's frame and its expectations.

    The SQL binds `$ds`, and where it places times in the day `$tz` (ingest.day_timezone), `$day_start`
    and `$day_end` (the day's UTC bounds). `grain` says what one frame row is (event, user, item): the
    big marts are read per user.
    """

    name: str
    sql: str
    expectations: list[Expectation]
    grain: str


@dataclass
class ValidationResult:
    ds: str
    success: bool
    suites: dict[str, bool]
    failures: list[str]
    data_docs: Path | None
    rows: dict[str, int] = field(default_factory=dict)        # frame rows validated per suite
    seconds: dict[str, float] = field(default_factory=dict)   # read + validate time per suite


# --------------------------------------------------------------------------------------------------
# Bands against the previous ds
# --------------------------------------------------------------------------------------------------

def _previous_ds(ds: str) -> str:
    return (date.fromisoformat(ds) - timedelta(days=1)).isoformat()


def _row_count_band(con: duckdb.DuckDBPyConnection, cfg: Config, table: str, ds: str,
                    count: str = "count(*)") -> tuple[int, int | None]:
    """Allowed row counts for ds: at least one row, and within the configured multiples of the previous ds.

    `count` is the SQL aggregate that gives the row count (a list table counts its elements).
    """
    n_prev = con.execute(f"SELECT coalesce({count}, 0) FROM {table} WHERE ds = ?", [_previous_ds(ds)]).fetchone()[0]
    if n_prev == 0:
        return 1, None
    return max(1, int(n_prev * cfg.validate.min_row_ratio)), int(n_prev * cfg.validate.max_row_ratio) + 1


def _null_rate_ceilings(con: duckdb.DuckDBPyConnection, cfg: Config, table: str, columns: list[str],
                        ds: str) -> dict[str, float]:
    """Highest allowed null rate per column: the previous ds's rate + max_null_rate_increase (1.0 without one).

    A source that never sends a field (no profiles in Taobao) stays at 100% and passes; a feed that breaks
    overnight (a catalogue that loses its categories) jumps and fails.
    """
    if not columns:
        return {}
    rates = ", ".join(f"avg(({c} IS NULL)::DOUBLE)" for c in columns)
    row = con.execute(f"SELECT count(*), {rates} FROM {table} WHERE ds = ?", [_previous_ds(ds)]).fetchone()
    if row[0] == 0:
        return dict.fromkeys(columns, 1.0)
    step = cfg.validate.max_null_rate_increase
    return {c: min(1.0, round(rate + step, 6)) for c, rate in zip(columns, row[1:], strict=True)}


# --------------------------------------------------------------------------------------------------
# Sequence features of the contract: which columns of a table, and their limits
# --------------------------------------------------------------------------------------------------

def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    schema, name = table.split(".")
    rows = con.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
                       "AND table_name = ?", [schema, name]).fetchall()
    return {r[0] for r in rows}


def _list_features(specs: FeatureSpecs, table: str, present: set[str]) -> list[FeatureSpec]:
    """Sequence and session features read from `table` (as training or scoring source) that it holds."""
    out = []
    for f in specs.features:
        if f.kind not in ("sequence", "session"):
            continue
        sources = [s for s in (f.source, f.scoring_source) if s is not None]
        if any(s.table == table and s.column == f.name for s in sources) and f.name in present:
            out.append(f)
    return out


def _max_history_len(specs: FeatureSpecs, features: list[FeatureSpec], cfg: Config) -> int:
    """The limit of the history-length column: the longest history of the contract."""
    lens = [f.max_len for f in features if f.kind == "sequence" and f.max_len]
    lens = lens or [f.max_len for f in specs.features if f.kind == "sequence" and f.max_len]
    return max(lens) if lens else cfg.features.history_max_len


def _session_limits(f: FeatureSpec) -> tuple[int | None, int | None]:
    """(max sessions S, max behaviours per session L) of a session feature."""
    return f.max_sessions, f.max_len


# --------------------------------------------------------------------------------------------------
# Expectation helpers
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expectation:
    """A GX expectation described, not built: `build()` makes `gx.expectations.<name>(**kwargs)`.

    Suites are described before GX is imported, so `validate` reads the frames from DuckDB (which
    releases the GIL) while `import great_expectations` runs (5-6 s of the stage at 1M events/day).
    """

    name: str
    kwargs: dict[str, Any]

    def build(self) -> Any:
        import great_expectations as gx

        return getattr(gx.expectations, self.name)(**self.kwargs)


class _Expectations:
    """Reads like the `gx.expectations` module: `E.ExpectColumnValuesToBeBetween(column=...)` describes one."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("Expect"):
            raise AttributeError(name)
        return lambda **kwargs: Expectation(name, kwargs)


def _E() -> _Expectations:  # noqa: N802 (reads like the gx.expectations module it stands for)
    return _Expectations()


def _id_checks(column: str) -> list[Any]:
    """Ids are present and non-negative (the landing contract)."""
    E = _E()
    return [E.ExpectColumnValuesToNotBeNull(column=column),
            E.ExpectColumnValuesToBeBetween(column=column, min_value=0)]


def _null_rate_checks(ceilings: dict[str, float]) -> list[Any]:
    """`<column>_null` is 1.0 where the column is null: its mean is the null rate (the observed value)."""
    E = _E()
    return [E.ExpectColumnMeanToBeBetween(column=f"{c}_null", min_value=0.0, max_value=ceiling)
            for c, ceiling in ceilings.items()]


def _days_from_ds(expr: str) -> str:
    """SQL: whole days from ds to the local date (ingest.day_timezone) of a naive-UTC timestamp.

    Inside ds is a range test against the UTC bounds of the local day ($day_start, $day_end); only
    timestamps outside it pay for the time-zone conversion that tells how many days off they are.
    """
    return (f"(CASE WHEN ({expr}) >= $day_start AND ({expr}) < $day_end THEN 0 "
            f"ELSE timezone($tz, ({expr})::TIMESTAMPTZ)::DATE - $ds::DATE END)::BIGINT")


# --------------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------------

def _raw_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str) -> SuiteSpec:
    E = _E()
    lo, hi = _row_count_band(con, cfg, RAW_TABLE, ds)
    return SuiteSpec(
        "raw_behaviors",
        f"SELECT user_id, item_id, behavior, {_days_from_ds('ts')} AS ts_days_from_ds "
        f"FROM {RAW_TABLE} WHERE ds = $ds",
        [
            E.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi),
            E.ExpectColumnValuesToBeBetween(column="user_id", min_value=0),
            E.ExpectColumnValuesToBeBetween(column="item_id", min_value=0),
            E.ExpectColumnValuesToBeInSet(column="behavior", value_set=list(cfg.ingest.behaviors)),
            # every ts is inside ds (the local day in ingest.day_timezone): 0 days from ds
            E.ExpectColumnValuesToBeBetween(column="ts_days_from_ds", min_value=0, max_value=0),
        ],
        "event",
    )


def _user_features_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str, present: set[str]) -> SuiteSpec:
    E = _E()
    table = "marts.user_features"
    fields = [c for c in PROFILE_FIELDS if c in present]
    counts = [c for c in ("events_1d", "events_7d", "events_30d") if c in present]
    lo, hi = _row_count_band(con, cfg, table, ds)
    selects = ["user_id", *[f"({c} IS NULL)::DOUBLE AS {c}_null" for c in fields],
              *[f"{c}::BIGINT AS {c}" for c in counts]]
    if "age" in present:
        selects.append("age::DOUBLE AS age")  # nullable: DOUBLE keeps GX vectorised
    if "days_since_last_event" in present:
        selects.append("days_since_last_event::DOUBLE AS days_since_last_event")
    exps = [E.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi), *_id_checks("user_id"),
            *_null_rate_checks(_null_rate_ceilings(con, cfg, table, fields, ds))]
    exps += [E.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in counts]
    # windows nest: 1 day <= 7 days <= 30 days
    exps += [E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=b, column_B=a, or_equal=True)
             for a, b in zip(counts, counts[1:], strict=False)]
    if "age" in present:
        exps.append(E.ExpectColumnValuesToBeBetween(column="age", min_value=0, max_value=130))
    if "days_since_last_event" in present:
        exps.append(E.ExpectColumnValuesToBeBetween(column="days_since_last_event", min_value=0))
    return SuiteSpec("user_features", f"SELECT {', '.join(selects)} FROM {table} WHERE ds = $ds",
                     exps, "user")


def _item_features_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str, present: set[str]) -> SuiteSpec:
    E = _E()
    table = "marts.item_features"
    fields = [c for c in CATALOGUE_FIELDS if c in present]
    lo, hi = _row_count_band(con, cfg, table, ds)
    selects = ["item_id", *[f"({c} IS NULL)::DOUBLE AS {c}_null" for c in fields]]
    # items missing from the catalogue are kept with null attributes: the null rates show how many
    exps = [E.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi), *_id_checks("item_id"),
            *_null_rate_checks(_null_rate_ceilings(con, cfg, table, fields, ds))]
    if "price" in present:
        selects.append("price::DOUBLE AS price")
        exps.append(E.ExpectColumnValuesToBeBetween(column="price", min_value=0))  # no negative prices
    if {"events_7d", "buys_7d"} <= present:
        selects += ["events_7d::BIGINT AS events_7d", "buys_7d::BIGINT AS buys_7d"]
        exps += [E.ExpectColumnValuesToBeBetween(column="buys_7d", min_value=0),
                 E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="events_7d", column_B="buys_7d",
                                                           or_equal=True)]
    return SuiteSpec("item_features", f"SELECT {', '.join(selects)} FROM {table} WHERE ds = $ds",
                     exps, "item")


def _sequence_selects(features: list[FeatureSpec], agg: str | None) -> list[str]:
    """SQL for the lengths of list columns; `agg` (e.g. max) folds them per group when set.

    A sequence gives `<name>__len`; a session feature (list of sessions) gives `<name>__sessions` (S) and
    `<name>__session_len` (the longest session, L).
    """
    def wrap(expr: str) -> str:
        return f"{agg}({expr})" if agg else expr

    out = []
    for f in features:
        if f.kind == "sequence":
            out.append(f"coalesce({wrap(f'len({f.name})')}, 0)::BIGINT AS {f.name}__len")
        else:
            longest = f"list_max(list_transform({f.name}, lambda s: len(s)))"
            out += [f"coalesce({wrap(f'len({f.name})')}, 0)::BIGINT AS {f.name}__sessions",
                    f"coalesce({wrap(longest)}, 0)::BIGINT AS {f.name}__session_len"]
    return out


def _sequence_checks(features: list[FeatureSpec]) -> list[Any]:
    """Every list no longer than its contract limit (observed: the offending lengths)."""
    E = _E()
    out = []
    for f in features:
        if f.kind == "sequence":
            out.append(E.ExpectColumnValuesToBeBetween(column=f"{f.name}__len", min_value=0, max_value=f.max_len))
            continue
        sessions, length = _session_limits(f)
        if sessions:
            out.append(E.ExpectColumnValuesToBeBetween(column=f"{f.name}__sessions", min_value=0,
                                                       max_value=sessions))
        if length:
            out.append(E.ExpectColumnValuesToBeBetween(column=f"{f.name}__session_len", min_value=0,
                                                       max_value=length))
    return out


def _user_histories_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str, present: set[str],
                          specs: FeatureSpecs) -> SuiteSpec:
    E = _E()
    table = "marts.user_histories"
    features = _list_features(specs, table, present)
    lo, hi = _row_count_band(con, cfg, table, ds)
    selects = ["user_id", *_sequence_selects(features, None)]
    exps = [E.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi), *_id_checks("user_id"),
            *_sequence_checks(features)]
    if specs.length in present:
        selects.append(f"{specs.length}::BIGINT AS {specs.length}")
        exps.append(E.ExpectColumnValuesToBeBetween(column=specs.length, min_value=0,
                                                    max_value=_max_history_len(specs, features, cfg)))
        # every history list holds exactly history_length behaviours (they are parallel lists)
        exps += [E.ExpectColumnPairValuesToBeEqual(column_A=f"{f.name}__len", column_B=specs.length)
                 for f in features if f.kind == "sequence"]
    if "event_at_history" in present:
        # a history as of the end of ds holds nothing after ds
        selects.append(f"coalesce({_days_from_ds('list_max(event_at_history)')}, 0) AS last_event_days_from_ds")
        exps.append(E.ExpectColumnValuesToBeBetween(column="last_event_days_from_ds", max_value=0))
    return SuiteSpec("user_histories", f"SELECT {', '.join(selects)} FROM {table} WHERE ds = $ds", exps,
                     "user")


def _history_list_checks(specs: FeatureSpecs, features: list[FeatureSpec], present: set[str],
                         cfg: Config) -> tuple[list[str], list[Any]]:
    """Per-user SQL and expectations of list columns: longest lists, longest history length and rows whose
    parallel history lists are not exactly history_length long."""
    E = _E()
    length = specs.length
    selects, exps = _sequence_selects(features, "max"), _sequence_checks(features)
    if length in present:
        selects.append(f"max({length})::BIGINT AS {length}__max")
        exps.append(E.ExpectColumnValuesToBeBetween(column=f"{length}__max", min_value=0,
                                                    max_value=_max_history_len(specs, features, cfg)))
        sequences = [f for f in features if f.kind == "sequence"]
        if sequences:
            off = " OR ".join(f"len({f.name}) <> {length}" for f in sequences)
            selects.append(f"count(*) FILTER (WHERE {off})::BIGINT AS misaligned_histories")
            exps.append(E.ExpectColumnValuesToBeBetween(column="misaligned_histories", min_value=0, max_value=0))
    return selects, exps


def _event_day_checks() -> tuple[list[str], list[Any]]:
    """Per user: days from ds of the first and last event_at, both 0 (every row is an event of ds)."""
    E = _E()
    return ([f"{_days_from_ds('min(event_at)')} AS first_event_days_from_ds",
             f"{_days_from_ds('max(event_at)')} AS last_event_days_from_ds"],
            [E.ExpectColumnValuesToBeBetween(column="first_event_days_from_ds", min_value=0, max_value=0),
             E.ExpectColumnValuesToBeBetween(column="last_event_days_from_ds", min_value=0, max_value=0)])


def _training_examples_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str, present: set[str],
                             specs: FeatureSpecs) -> SuiteSpec:
    """Per user: examples, label rate, null/min item ids, event day offsets (and list columns, if any)."""
    E = _E()
    table = "marts.training_examples"
    lo, hi = _row_count_band(con, cfg, table, ds)
    neg = cfg.features.negatives_per_positive
    list_selects, list_exps = _history_list_checks(specs, _list_features(specs, table, present), present, cfg)
    day_selects, day_exps = _event_day_checks()
    selects = ["user_id", "count(*)::BIGINT AS examples", f"avg({specs.label})::DOUBLE AS label_rate",
               "count(*) FILTER (WHERE item_id IS NULL)::BIGINT AS null_item_ids",
               "min(item_id)::BIGINT AS min_item_id", *list_selects, *day_selects]
    exps = [
        # the sum of the per-user counts is the mart's row count of ds
        E.ExpectColumnSumToBeBetween(column="examples", min_value=lo, max_value=hi),
        *_id_checks("user_id"),
        E.ExpectColumnValuesToBeBetween(column="null_item_ids", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="min_item_id", min_value=0),
        # one positive per `neg` negatives; sampling collisions may drop a few negatives
        E.ExpectColumnMeanToBeBetween(column="label_rate", min_value=0.5 / (1 + neg), max_value=2.0 / (1 + neg)),
        *list_exps,
        # every example is an event of ds (positives) or shares one (negatives)
        *day_exps,
    ]
    return SuiteSpec("training_examples",
                     f"SELECT {', '.join(selects)} FROM {table} WHERE ds = $ds GROUP BY user_id", exps,
                     "user")


def _training_histories_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str, present: set[str],
                              specs: FeatureSpecs) -> SuiteSpec:
    """Per user: positives, longest lists, misaligned lists, event day offsets (the mart: one row per positive)."""
    E = _E()
    table = "marts.training_histories"
    lo, hi = _row_count_band(con, cfg, table, ds)
    list_selects, list_exps = _history_list_checks(specs, _list_features(specs, table, present), present, cfg)
    day_selects, day_exps = _event_day_checks()
    selects = ["user_id", "count(*)::BIGINT AS positives", *list_selects, *day_selects]
    exps = [E.ExpectColumnSumToBeBetween(column="positives", min_value=lo, max_value=hi),
            *_id_checks("user_id"), *list_exps, *day_exps]
    return SuiteSpec("training_histories",
                     f"SELECT {', '.join(selects)} FROM {table} WHERE ds = $ds GROUP BY user_id", exps,
                     "user")


def _scoring_candidates_suite(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str) -> SuiteSpec:
    """Per user: the number of candidates, null and smallest item ids.

    Read from `marts.scoring_candidate_lists` (one list per user) when dbt builds it, so the pair view
    `marts.scoring_candidates` (~candidates_per_user rows per user) is never expanded; else from the pairs.
    """
    E = _E()
    lists = "marts.scoring_candidate_lists"
    if table_exists(con, lists):
        lo, hi = _row_count_band(con, cfg, lists, ds, count="sum(len(item_ids))")
        sql = ("SELECT user_id, len(item_ids)::BIGINT AS candidates, "
               "(len(item_ids) - list_count(item_ids))::BIGINT AS null_item_ids, "  # list_count skips nulls
               f"list_min(item_ids)::BIGINT AS min_item_id FROM {lists} WHERE ds = $ds")
    else:
        table = "marts.scoring_candidates"
        lo, hi = _row_count_band(con, cfg, table, ds)
        sql = ("SELECT user_id, count(*)::BIGINT AS candidates, "
               "count(*) FILTER (WHERE item_id IS NULL)::BIGINT AS null_item_ids, "
               f"min(item_id)::BIGINT AS min_item_id FROM {table} WHERE ds = $ds GROUP BY user_id")
    return SuiteSpec(
        "scoring_candidates",
        sql,
        [
            # the sum of the per-user counts is the number of (user, candidate) pairs of ds
            E.ExpectColumnSumToBeBetween(column="candidates", min_value=lo, max_value=hi),
            *_id_checks("user_id"),
            # at most candidates_per_user each (an empty list, a user who touched everything, is allowed)
            E.ExpectColumnValuesToBeBetween(column="candidates", min_value=0,
                                            max_value=cfg.features.candidates_per_user),
            E.ExpectColumnValuesToBeBetween(column="null_item_ids", min_value=0, max_value=0),
            E.ExpectColumnValuesToBeBetween(column="min_item_id", min_value=0),
        ],
        "user",
    )


def _mart_suites(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str) -> list[SuiteSpec]:
    """Suites on the dbt marts that exist (validate can also run right after ingest)."""
    specs = load_spec(cfg.paths.feature_specs)
    suites = []
    for mart in MARTS:
        table = f"marts.{mart}"
        if not table_exists(con, table):
            continue
        present = _columns(con, table)
        if mart == "user_features":
            suites.append(_user_features_suite(con, cfg, ds, present))
        elif mart == "item_features":
            suites.append(_item_features_suite(con, cfg, ds, present))
        elif mart == "user_histories":
            suites.append(_user_histories_suite(con, cfg, ds, present, specs))
        elif mart == "training_examples":
            suites.append(_training_examples_suite(con, cfg, ds, present, specs))
        elif mart == "training_histories":
            suites.append(_training_histories_suite(con, cfg, ds, present, specs))
        else:
            suites.append(_scoring_candidates_suite(con, cfg, ds))
    return suites


# --------------------------------------------------------------------------------------------------
# Running suites with GX
# --------------------------------------------------------------------------------------------------

def _describe(result: Any) -> str:
    """One line per failed expectation: its type, arguments and what was observed."""
    cfg = result.expectation_config
    # GX turns integer bounds into floats (0 -> 0.0); print them as they were written
    kwargs = {k: int(v) if isinstance(v, float) and v.is_integer() else v
              for k, v in cfg.kwargs.items() if k != "batch_id"}
    r = result.result or {}
    observed = r.get("observed_value")
    if observed is None and "unexpected_count" in r:
        observed = (f"{r['unexpected_count']} unexpected ({r.get('unexpected_percent') or 0:.2f}%), "
                    f"e.g. {r.get('partial_unexpected_list', [])[:5]}")
    if observed is None and result.exception_info.get("raised_exception"):
        observed = f"error: {result.exception_info.get('exception_message')}"
    return f"{cfg.type}({kwargs}): observed {observed}"


def _context(cfg: Config) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX keeps its project (suites, validation results, Data Docs) in <home>/gx
    cfg.paths.home.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(cfg.paths.home))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def _run_suite(ctx: Any, spec: SuiteSpec, frame: pd.DataFrame, run_id: Any) -> Any:
    """Validate one frame (GX stores the result under run_id); returns GX's suite validation result."""
    import great_expectations as gx

    source = ctx.data_sources.add_or_update_pandas("recsys")
    asset = next((a for a in source.assets if a.name == spec.name), None) or \
        source.add_dataframe_asset(name=spec.name)
    batch = next((b for b in asset.batch_definitions if b.name == "ds"), None) or \
        asset.add_batch_definition_whole_dataframe("ds")
    suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=spec.name,
                                                        expectations=[e.build() for e in spec.expectations]))
    vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=spec.name, data=batch,
                                                                          suite=suite))
    return vd.run(batch_parameters={"dataframe": frame}, run_id=run_id, result_format={"result_format": "SUMMARY"})


def _build_docs(ctx: Any, run_id: Any) -> Path | None:
    """Render this run's validation results and the index (not the whole site: it grows every day)."""
    # ValidationDefinition.run stores each result but does not return its key: find them by run
    keys = [k for k in ctx.validation_results_store.list_keys() if k.run_id == run_id]
    ctx.build_data_docs(resource_identifiers=keys)
    sites = ctx.get_docs_sites_urls()
    return Path(sites[0]["site_url"].removeprefix("file://")) if sites and sites[0]["site_url"] else None


def _read_frames(cfg: Config, ds: str) -> tuple[list[SuiteSpec], dict[str, pd.DataFrame], dict[str, float]]:
    """Every suite of ds with its frame (one read-only connection, closed before GX starts)."""
    con = connect(cfg, read_only=True)
    frames, seconds = {}, {}
    try:
        con.execute("SET TimeZone = 'UTC'")  # raw ts are naive UTC
        # the per-user aggregates over the marts' lists took 5.1 GB at 10M events/day with DuckDB's default
        # limit (80% of RAM); bounded, they spill instead and the frames stay beside it
        bound_memory(con, "RECSYS_VALIDATE_MEMORY_LIMIT")
        specs = [_raw_suite(con, cfg, ds), *_mart_suites(con, cfg, ds)]
        start, end = day_bounds(ds, cfg.ingest.day_timezone)
        bind = {"ds": ds, "tz": cfg.ingest.day_timezone, "day_start": start, "day_end": end}
        for s in specs:
            started = time.perf_counter()
            params = {k: v for k, v in bind.items() if f"${k}" in s.sql}
            frames[s.name] = con.execute(s.sql, params).df()
            seconds[s.name] = time.perf_counter() - started
    finally:
        con.close()
    return specs, frames, seconds


def _error_message(ds: str, failures: list[str], rows: dict[str, int], docs: Path | None) -> str:
    lines = [f"data validation failed for ds={ds} ({len(failures)} expectations):", *failures]
    if rows.get("raw_behaviors") == 0:
        lines.append(f"raw.behaviors holds no rows for ds={ds}: an empty day publishes nothing (ingest refuses "
                     f"an empty partition; rows it rejected are in raw.rejected_rows)")
    return "\n  ".join(lines) + f"\nData Docs: {docs}"


def validate(cfg: Config, ds: str, raise_on_failure: bool = True) -> ValidationResult:
    """Run every suite for ds; raise DataValidationError listing all failures (unless told not to)."""
    ds = validate_ds(ds)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate-read") as pool:
        reading = pool.submit(_read_frames, cfg, ds)  # DuckDB works while GX imports in _context
        ctx = _context(cfg)
        specs, frames, seconds = reading.result()
    import great_expectations as gx  # loaded by _context by now

    run_id = gx.core.run_identifier.RunIdentifier(run_name=f"recsys-{ds}")
    outcome, failures = {}, []
    for spec in specs:
        started = time.perf_counter()
        result = _run_suite(ctx, spec, frames[spec.name], run_id)
        seconds[spec.name] = round(seconds[spec.name] + time.perf_counter() - started, 3)
        outcome[spec.name] = bool(result.success)
        failures += [f"{spec.name}: {_describe(r)}" for r in result.results if not r.success]
    docs = _build_docs(ctx, run_id)
    rows = {name: len(frame) for name, frame in frames.items()}
    log.info("validate ds=%s: %s; rows per suite %s; seconds %s", ds, outcome, rows, seconds)
    log.info("Data Docs for ds=%s: %s", ds, docs)
    result = ValidationResult(ds, all(outcome.values()), outcome, failures, docs, rows, seconds)
    if raise_on_failure and not result.success:
        raise DataValidationError(_error_message(ds, failures, rows, docs), failures, docs)
    return result
