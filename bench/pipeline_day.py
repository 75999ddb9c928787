"""Benchmark: wall time and peak memory of one day of ingest + dbt build + GX on synthetic logs.

    .venv/bin/python bench/pipeline_day.py --events 1000000 [--out bench/results/pipeline_day.jsonl]

Two days are synthesized by default (the first gives the second a history and a previous-day row count);
the first is processed, then the second day's stages are timed one by one. `--days N` synthesizes N days
and times the last one, so the cost of a longer history shows (each earlier day's stage times are kept
in `earlier_days`). Each run appends one
JSON line: events, seconds per stage, events/s end to end, peak RSS (MB), dbt's per-node timings of the
timed day (from run_results.json: the slowest models and tests), the load average (other processes
on the machine disturb the timings) and `host_probe_s`, a fixed workload run just before the timed day
(`_probe_phase`): the host's speed varies between runs, so compare results with their probes. Beside
them: `day_cpu_s`, the CPU seconds the timed day's process used, and `host_cpu_s`, what the machine's
CPUs did meanwhile (busy / idle / steal seconds from /proc/stat, summed over CPUs; steal is time the
hypervisor gave our virtual CPUs to another guest, which a probe taken before the day cannot see).

Every phase runs in a fresh child process (spawned, so nothing is inherited but the arguments): the
generator, the untimed first day, and the timed day's three stages. A phase reports its own
`ru_maxrss` (RUSAGE_SELF, plus RUSAGE_CHILDREN for anything it spawned), so `peak_rss_mb` is the peak
of the timed day's ingest + dbt + GX process (what an Airflow worker running that day needs) and the
generator's memory, which grows with the synthesized day, is reported apart (`synth_peak_rss_mb`).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

STAGES = ("ingest", "transform", "validate")
START = date(2024, 1, 1)


def bench_days(n: int) -> list[str]:
    """The n synthesized dates from START; the last is the timed one."""
    return [(START + timedelta(days=i)).isoformat() for i in range(n)]


def _peak_rss_mb() -> float:
    """Peak RSS of this process or of any child it waited for (ru_maxrss is in KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system) this process and the children it waited for have used."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


HOST_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _host_ticks() -> dict[str, int] | None:
    """The whole machine's CPU time so far by state, in clock ticks (the first line of /proc/stat; None
    where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    return dict(zip(HOST_STATES, map(int, fields[1:1 + len(HOST_STATES)]), strict=True))


def _host_cpu_s(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float] | None:
    """What every CPU of the machine did between two `_host_ticks`, in seconds summed over the CPUs:
    `busy` (any process, this benchmark's included), `idle` (idle + waiting for I/O) and `steal` (the
    hypervisor ran another guest on our virtual CPU: time this machine's CPUs did not have)."""
    if before is None or after is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    delta = {k: (after[k] - before[k]) / tick for k in HOST_STATES}
    busy = sum(delta[k] for k in ("user", "nice", "system", "irq", "softirq"))
    return {"busy": round(busy, 1), "idle": round(delta["idle"] + delta["iowait"], 1),
            "steal": round(delta["steal"], 1)}


def _dbt_timings(target: Path, top: int = 20) -> dict[str, float]:
    """Seconds per dbt node of the last invocation, slowest first (models, tests and unit tests)."""
    path = target / "run_results.json"
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    timed = sorted(((r["unique_id"], float(r["execution_time"])) for r in results), key=lambda t: -t[1])
    out = {uid.split(".", 1)[1]: round(s, 2) for uid, s in timed[:top]}
    out["_all_nodes"] = round(sum(s for _, s in timed), 2)
    return out


def _synth_phase(home: str, events: int, seed: int, days: int) -> dict[str, Any]:
    """Child process: write `days` synthetic days into the landing folder of `home`."""
    os.environ["RECSYS_HOME"] = home
    from recsys.config import load_config
    from recsys.data.synth import synthesize

    cfg = load_config()
    per_user_day = 6.0
    users = max(100, int(events / per_user_day))
    items = max(200, users // 4)
    t0 = time.perf_counter()
    summary = synthesize(cfg.paths.landing, days=days, users=users, items=items, seed=seed,
                         start=START, events_per_user_day=per_user_day)
    return {"users": users, "items": items, "events_day": summary.per_ds[bench_days(days)[-1]],
            "synth_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_rss_mb())}


def _day_phase(home: str, ds: str, next_night: bool = False) -> dict[str, Any]:
    """Child process: ingest, transform and validate one ds, each stage timed (its log on stderr says
    where a stage's time went: the snapshot copy, dbt, closing the warehouse). `next_night`: run it as a
    nightly run finds the warehouse, a day after the last one (`_as_if_a_day_passed`)."""
    os.environ["RECSYS_HOME"] = home
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from recsys.config import load_config
    from recsys.pipeline import run_stage

    cfg = load_config()
    if next_night:
        _as_if_a_day_passed(cfg)
    timings = {}
    for stage in STAGES:
        t = time.perf_counter()
        run_stage(stage, ds, cfg)
        timings[stage] = round(time.perf_counter() - t, 2)
    return {"stage_s": timings, "dbt_node_s": _dbt_timings(Path(cfg.paths.dbt_target)),
            "peak_rss_mb": round(_peak_rss_mb()), "cpu_s": round(_cpu_s(), 1)}


def _as_if_a_day_passed(cfg: Any) -> None:
    """Date the read snapshot (and the warehouse's last write) a day back: the timed day's first writer then
    pays the one snapshot copy a nightly run pays (`warehouse.snapshot_max_age_minutes`), not none because
    the untimed day just ran."""
    from recsys.warehouse import snapshot_path

    day_ago = time.time() - 86_400
    for path, stamp in ((snapshot_path(cfg), day_ago - 60), (Path(cfg.paths.warehouse), day_ago)):
        if path.exists():
            os.utime(path, (stamp, stamp))


def _in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run fn(*args) in a fresh spawned process and return its result (its exceptions re-raise here; a
    child killed for memory raises BrokenProcessPool instead of hanging)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return round(time.perf_counter() - started, 2)


def _probe_phase() -> dict[str, float]:
    """How fast the host is right now: a fixed workload, in seconds (lower is faster).

    This machine's speed varies between runs: the same probe took 2.10 to 3.10 s (python), 8.16 to
    11.67 s (hash) and 5.21 to 6.83 s (window) on 2026-12-03, and dbt's node times of unchanged SQL
    49.5 to 58.1 s at 1M, so a result compares with another only together with the probe taken next to
    it. The parts are the workloads that docs/testing.md and
    bench/README.md quote as "CPU probe": a pure-Python loop (one core; about 2-3 s here), a DuckDB hash
    aggregate (8-11 s) and a DuckDB window (5-7 s), both on 2 threads.
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET threads = 2")
        return {
            "python": _seconds(lambda: sum(i * i for i in range(20_000_000))),
            "duckdb_hash": _seconds(lambda: con.execute(
                "SELECT count(DISTINCT hash(i) % 50000000) FROM range(60000000) t(i)").fetchone()),
            "duckdb_window": _seconds(lambda: con.execute(
                "SELECT sum(s) FROM (SELECT sum(i) OVER (PARTITION BY i % 1000 ORDER BY i ROWS 5 PRECEDING) s "
                "FROM range(20000000) t(i))").fetchone()),
        }
    finally:
        con.close()


def _landed_phase(home: str, events: int, ds: str) -> dict[str, Any]:
    """What `_synth_phase` reports, read back from the landing folder of an earlier run (--resume)."""
    import pyarrow.parquet as pq

    users = max(100, int(events / 6.0))
    files = sorted((Path(home) / "landing" / "behaviors" / f"ds={ds}").glob("*.parquet"))
    if not files:
        raise SystemExit(f"--resume: no synthesized behaviours of {ds} under {home}/landing")
    return {"users": users, "items": max(200, users // 4), "synth_s": None, "peak_rss_mb": None,
            "events_day": sum(pq.ParquetFile(f).metadata.num_rows for f in files)}


def run(events: int, seed: int, home: Path, resume: bool = False, days: int = 2) -> dict:
    *earlier, timed = bench_days(days)
    earlier_days: dict[str, dict[str, float]] = {}
    first = {"peak_rss_mb": None}
    if resume:  # the synthesized days and the earlier days' tables are already in home
        synth = _landed_phase(str(home), events, timed)
    else:
        synth = _in_child(_synth_phase, str(home), events, seed, days)
        for ds in earlier:
            done = _in_child(_day_phase, str(home), ds)
            earlier_days[ds] = done["stage_s"]
            first["peak_rss_mb"] = max(first["peak_rss_mb"] or 0, done["peak_rss_mb"])
    probe = _in_child(_probe_phase)
    ticks = _host_ticks()
    day = _in_child(_day_phase, str(home), timed, True)
    host_cpu = _host_cpu_s(ticks, _host_ticks())
    total = sum(day["stage_s"].values())
    return {
        "bench": "pipeline_day", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "days": days, "timed_ds": timed, "earlier_days": earlier_days,
        "events_requested": events, "events_day": synth["events_day"], "users": synth["users"],
        "items": synth["items"], "synth_s": synth["synth_s"], "stage_s": day["stage_s"],
        "total_s": round(total, 2), "events_per_s": round(synth["events_day"] / total),
        "peak_rss_mb": day["peak_rss_mb"], "first_day_peak_rss_mb": first["peak_rss_mb"],
        "synth_peak_rss_mb": synth["peak_rss_mb"], "dbt_node_s": day["dbt_node_s"],
        "loadavg": [round(x, 2) for x in os.getloadavg()], "host_probe_s": probe,
        "day_cpu_s": day.get("cpu_s"), "host_cpu_s": host_cpu,
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per day (approximate)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_day.jsonl")
    parser.add_argument("--home", type=Path, default=None, help="RECSYS_HOME for the run (default: a temp dir)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. what changed)")
    parser.add_argument("--days", type=int, default=2,
                        help="days to synthesize; all but the last are processed untimed first (a longer history)")
    parser.add_argument("--resume", action="store_true",
                        help="with --home of an earlier run (same --events and --days): skip synthesis and "
                             "the earlier days, time the last day again")
    args = parser.parse_args()
    if args.resume and args.home is None:
        parser.error("--resume needs --home")
    if args.days < 2:
        parser.error("--days must be at least 2 (the timed day needs a day before it)")
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        result = run(args.events, args.seed, args.home or Path(tmp), resume=args.resume, days=args.days)
    result["resumed"] = args.resume
    if args.note:
        result["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
