"""Benchmark: wall time of the Great Expectations gate (`recsys validate`) alone, at N events per day.

    .venv/bin/python bench/validate_day.py --events 1000000 [--out bench/results/validate_day.jsonl]

dbt at 1M events/day takes minutes and ~18 GB, so this bench builds warehouse tables of the real
shapes and the sizes one day of the synthetic shop produces (bench/pipeline_day.py's ratios: 6 events
per user-day, 1 item per 4 users, 1 + negatives_per_positive examples and one history row per event,
candidates_per_user candidates per active user, stored as one list per user like
marts.scoring_candidate_lists) directly in SQL, then times `validate` on the second
of two days (the first gives the row-count band its previous day). The first call also creates the
GX project and imports GX; both calls are reported, wall and CPU seconds (the machine is shared, so
wall time depends on the load recorded with it). Appends one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

DAYS = ("2024-01-01", "2024-01-02")


def _fill(con, cfg, events: int, users: int, items: int) -> None:  # noqa: ANN001 (duckdb, Config)
    """raw.behaviors for both days; the marts for the second day."""
    neg = cfg.features.negatives_per_positive
    per_user = cfg.features.candidates_per_user
    for ds in DAYS:
        con.execute("""
            INSERT INTO raw.behaviors
            SELECT ?::DATE, hash(i, 1) % ?, hash(i, 2) % ?, ['view','view','view','cart','buy'][i % 5 + 1],
                   ?::TIMESTAMP + to_microseconds((hash(i, 3) % 86400000000)::BIGINT), NULL, 'web', 'f.parquet', i
            FROM range(?) t(i)""", [ds, users, items, ds, events])
    ds = DAYS[1]
    # one row per example; the lists once per positive (marts.training_histories, joined by event_id).
    # Histories of the 2-day synthetic shop are short (0..~15)
    con.execute(f"""
        CREATE TABLE marts.training_examples AS
        SELECT ?::DATE AS ds, md5(i::VARCHAR) AS example_id, md5((i // {1 + neg})::VARCHAR) AS event_id,
               hash(i // {1 + neg}, 1) % ? AS user_id,
               hash(i, 2) % ? AS item_id, 'c' || (i % 40) AS category,
               CASE WHEN i % {1 + neg} = 0 THEN 1 ELSE 0 END::INTEGER AS label,
               ?::TIMESTAMP + to_microseconds((hash(i // {1 + neg}, 3) % 86400000000)::BIGINT) AS event_at,
               31 AS age, 'F' AS gender, 'nurse' AS occupation, 'Berlin' AS city, 10 AS hour, 2 AS weekday,
               'web' AS device
        FROM range(?) t(i)""", [ds, users, items, ds, events * (1 + neg)])
    con.execute("""
        CREATE TABLE marts.training_histories AS
        SELECT ?::DATE AS ds, md5(p::VARCHAR) AS event_id, hash(p, 1) % ? AS user_id,
               ?::TIMESTAMP + to_microseconds((hash(p, 3) % 86400000000)::BIGINT) AS event_at,
               list_transform(range(p % 13), lambda x: x + 7) AS item_id_history,
               list_transform(range(p % 13), lambda x: 'c' || x) AS category_history,
               list_transform(range(p % 13), lambda x: 'view') AS behavior_history,
               list_transform(range(p % 13), lambda x: 1) AS session_number_history,
               list_transform(range(p % 13), lambda x: x + 9) AS neg_item_id_history,
               list_transform(range(p % 13), lambda x: 'c' || x) AS neg_category_history,
               [list_transform(range(p % 5), lambda x: x + 7)] AS session_item_ids,
               [list_transform(range(p % 5), lambda x: 'c' || x)] AS session_category_ids,
               (p % 13)::INTEGER AS history_length
        FROM range(?) t(p)""", [ds, users, ds, events])
    con.execute("""
        CREATE TABLE marts.user_histories AS
        SELECT ?::DATE AS ds, u AS user_id, list_transform(range(u % 15), lambda x: x + 7) AS item_id_history,
               list_transform(range(u % 15), lambda x: 'c' || x) AS category_history,
               list_transform(range(u % 15), lambda x: 'view') AS behavior_history,
               list_transform(range(u % 15), lambda x: ?::TIMESTAMP) AS event_at_history,
               list_transform(range(u % 15), lambda x: 1) AS session_number_history,
               [list_transform(range(u % 5), lambda x: x + 7)] AS session_item_ids,
               [list_transform(range(u % 5), lambda x: 'c' || x)] AS session_category_ids,
               (u % 15)::INTEGER AS history_length
        FROM range(?) t(u)""", [ds, ds, users])
    con.execute("""
        CREATE TABLE marts.user_features AS
        SELECT ?::DATE AS ds, u AS user_id, 20 + u % 50 AS age, 'F' AS gender, 'nurse' AS occupation,
               'Berlin' AS city, 6::BIGINT AS events_1d, 12::BIGINT AS events_7d, 12::BIGINT AS events_30d,
               0 AS days_since_last_event
        FROM range(?) t(u)""", [ds, users])
    con.execute("""
        CREATE TABLE marts.item_features AS
        SELECT ?::DATE AS ds, i AS item_id, 'c' || (i % 40) AS category, 'b' || (i % 90) AS brand,
               (i % 1000) / 10.0 AS price, 24::BIGINT AS events_7d, 1::BIGINT AS buys_7d
        FROM range(?) t(i)""", [ds, items])
    # candidates as dbt stores them: one list per user, and the pair view consumers read
    con.execute(f"""
        CREATE TABLE marts.scoring_candidate_lists AS
        SELECT ?::DATE AS ds, u AS user_id, list_transform(range({per_user}), lambda k: (u + k) % ?) AS item_ids,
               20 AS n_covisitation, 80 AS n_category_popular, {per_user} - 100 AS n_global_popular,
               false AS is_cold_start
        FROM range(?) t(u)""", [ds, items, users])
    con.execute("""
        CREATE VIEW marts.scoring_candidates AS
        SELECT ds, user_id, unnest(item_ids) AS item_id, 'c1' AS category, 'global_popular' AS candidate_source
        FROM marts.scoring_candidate_lists""")


def _cpu_s() -> float:
    """CPU seconds of this process (user + system, all threads): less disturbed by other load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(events: int, home: Path) -> dict:
    os.environ["RECSYS_HOME"] = str(home)
    from recsys.config import load_config
    from recsys.validate import validate
    from recsys.warehouse import connect

    cfg = load_config()
    users = max(100, int(events / 6.0))
    items = max(200, users // 4)
    t0 = time.perf_counter()
    con = connect(cfg, read_only=False)
    _fill(con, cfg, events, users, items)
    con.close()
    build_s = time.perf_counter() - t0
    timings, cpu, per_suite = [], [], []
    for _ in range(2):
        t, c = time.perf_counter(), _cpu_s()
        result = validate(cfg, DAYS[1], raise_on_failure=False)
        timings.append(round(time.perf_counter() - t, 2))
        cpu.append(round(_cpu_s() - c, 2))
        per_suite.append(result.seconds)
    return {
        "bench": "validate_day", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events_day": events, "users": users, "items": items, "build_tables_s": round(build_s, 2),
        "validate_s": timings, "validate_cpu_s": cpu, "suite_s": per_suite, "rows": result.rows,
        "suites": result.suites, "failures": result.failures,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per day")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "validate_day.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        result = run(args.events, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
