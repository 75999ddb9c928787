"""Benchmark: wall time and peak memory of one day of ingest + dbt build + GX on synthetic logs.

    .venv/bin/python bench/pipeline_day.py --events 1000000 [--out bench/results/pipeline_day.jsonl]

Two days are synthesized (the first gives the second a history and a previous-day row count); the
first is processed untimed, then the second day's stages are timed one by one. Each run appends one
JSON line: events, seconds per stage, events/s end to end, peak RSS of this process (MB), dbt's
per-node timings of the timed day (from run_results.json: the slowest models and tests) and the load
average (other processes on the machine disturb the timings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

STAGES = ("ingest", "transform", "validate")


def _peak_rss_mb() -> float:
    """Peak RSS of this process (dbt and GX run in-process, so this covers them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dbt_timings(target: Path, top: int = 12) -> dict[str, float]:
    """Seconds per dbt node of the last invocation, slowest first (models, tests and unit tests)."""
    path = target / "run_results.json"
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    timed = sorted(((r["unique_id"], float(r["execution_time"])) for r in results), key=lambda t: -t[1])
    out = {uid.split(".", 1)[1]: round(s, 2) for uid, s in timed[:top]}
    out["_all_nodes"] = round(sum(s for _, s in timed), 2)
    return out


def run(events: int, seed: int, home: Path) -> dict:
    os.environ["RECSYS_HOME"] = str(home)
    from recsys.config import load_config
    from recsys.data.synth import synthesize
    from recsys.pipeline import run_stage

    cfg = load_config()
    per_user_day = 6.0
    users = max(100, int(events / per_user_day))
    items = max(200, users // 4)
    t0 = time.perf_counter()
    summary = synthesize(cfg.paths.landing, days=2, users=users, items=items, seed=seed,
                         start=date(2024, 1, 1), events_per_user_day=per_user_day)
    synth_s = time.perf_counter() - t0
    for stage in STAGES:
        run_stage(stage, "2024-01-01", cfg)
    timings = {}
    for stage in STAGES:
        t = time.perf_counter()
        run_stage(stage, "2024-01-02", cfg)
        timings[stage] = round(time.perf_counter() - t, 2)
    dbt_nodes = _dbt_timings(Path(cfg.paths.dbt_target))
    day_events = summary.per_ds["2024-01-02"]
    total = sum(timings.values())
    return {
        "bench": "pipeline_day", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events_requested": events, "events_day": day_events, "users": users, "items": items,
        "synth_s": round(synth_s, 2), "stage_s": timings, "total_s": round(total, 2),
        "events_per_s": round(day_events / total), "peak_rss_mb": round(_peak_rss_mb()),
        "dbt_node_s": dbt_nodes, "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per day (approximate)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_day.jsonl")
    parser.add_argument("--home", type=Path, default=None, help="RECSYS_HOME for the run (default: a temp dir)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. what changed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        result = run(args.events, args.seed, args.home or Path(tmp))
    if args.note:
        result["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
