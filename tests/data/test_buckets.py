"""Bucketed builds (dbt_project/macros/user_buckets.sql) give exactly the rows of a single-query build.

Two warehouses get the same synthetic raw data (two days) and the same dbt build, once with the default
bucket sizes (one bucket on this tiny data) and once with sizes that force several user buckets in
training_sequences, user_histories and scoring_candidate_lists and several item buckets in
int_item_covisitation. Every table must be identical row for row (EXCEPT ALL both ways is empty).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import duckdb
import pytest

from recsys.config import Config, load_config
from recsys.data.synth import synthesize
from recsys.ingest import ingest
from recsys.transform import build

DAYS = ("2024-01-01", "2024-01-02")
BUCKETS = 5  # forced per model (about: sizes are rounded up from the day's counts)
TABLES = ["marts.training_sequences", "marts.training_histories", "marts.user_histories",
          "marts.scoring_candidate_lists", "marts.training_example_lists", "intermediate.int_item_covisitation",
          "intermediate.int_item_popularity"]
OVERRIDES = {"features.candidates_per_user": 12, "features.history_max_len": 8, "features.dsin_max_sessions": 3,
             "features.dsin_session_len": 4, "features.negatives_per_positive": 2}


def _warehouse(home: Path, forced: bool) -> tuple[Config, dict[str, int]]:
    """Synthesize, ingest and build both days in `home`; with `forced`, bucket sizes of ~1/BUCKETS of the
    counts each model divides. Returns the config and the bucket counts asked for on the last day."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_HOME", str(home))
    try:
        cfg = load_config(overrides=OVERRIDES)
        synthesize(Path(cfg.paths.landing), days=len(DAYS), users=80, items=60, seed=11, start=date(2024, 1, 1))
        counts: dict[str, int] = {}
        for n, ds in enumerate(DAYS):
            ingest(cfg, ds)
            con = duckdb.connect(str(cfg.paths.warehouse), read_only=True)
            try:
                day = con.execute("SELECT count(*) FROM raw.behaviors WHERE ds = ?", [ds]).fetchone()[0]
                window = con.execute("SELECT count(*) FROM raw.behaviors WHERE ds <= ?", [ds]).fetchone()[0]
            finally:
                con.close()
            sizes = {"history_bucket_events": math.ceil(day / BUCKETS),
                     "candidate_bucket_events": math.ceil(day / BUCKETS),
                     "covisitation_bucket_events": math.ceil(window / BUCKETS)}
            build(cfg, ds, extra_vars=sizes if forced else None)
            if n == len(DAYS) - 1:
                counts = {"users": math.ceil(day / sizes["history_bucket_events"]),
                          "items": math.ceil(window / sizes["covisitation_bucket_events"])}
        return cfg, counts
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict[str, int]]]:
    single, _ = _warehouse(tmp_path_factory.mktemp("single"), forced=False)
    bucketed, counts = _warehouse(tmp_path_factory.mktemp("bucketed"), forced=True)
    yield Path(single.paths.warehouse), Path(bucketed.paths.warehouse), counts


@pytest.mark.parametrize("table", TABLES)
def test_bucketed_build_equals_single_query_build(warehouses: tuple[Path, Path, dict[str, int]], table: str) -> None:
    single, bucketed, counts = warehouses
    assert counts["users"] >= 3 and counts["items"] >= 3  # the forced build really split the work
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{single}' AS single (READ_ONLY)")
        con.execute(f"ATTACH '{bucketed}' AS bucketed (READ_ONLY)")
        rows = con.execute(f"SELECT count(*) FROM single.{table}").fetchone()[0]
        assert rows > 0, f"{table} is empty: nothing compared"
        for a, b in (("single", "bucketed"), ("bucketed", "single")):
            extra = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a}.{table} EXCEPT ALL "
                                f"SELECT * FROM {b}.{table})").fetchone()[0]
            assert extra == 0, f"{table}: {extra} row(s) of the {a} build missing from the {b} build"
        assert con.execute(f"SELECT count(*) FROM bucketed.{table}").fetchone()[0] == rows
    finally:
        con.close()


def test_every_candidate_source_is_exercised(warehouses: tuple[Path, Path, dict[str, int]]) -> None:
    # the comparison above means something only if each part of the list algorithm produced rows
    con = duckdb.connect(str(warehouses[0]), read_only=True)
    try:
        sums = con.execute("SELECT sum(n_covisitation), sum(n_category_popular), sum(n_global_popular) "
                           f"FROM marts.scoring_candidate_lists WHERE ds = '{DAYS[-1]}'").fetchone()
    finally:
        con.close()
    assert all(s and s > 0 for s in sums), sums
