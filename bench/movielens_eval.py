"""MovieLens-100K end to end: the champion vs popularity and Base over the last days of the data.

    .venv/bin/python bench/movielens_eval.py [--path ../shared/data/ml-100k] [--days 30] [--set key=value ...]

Imports the release into a temporary RECSYS_HOME (never into the repository: MovieLens may not be
redistributed), ingests every day before the window, builds the marts of the training window, then
runs every stage as the DAG does (transform, validate, train every enabled model: din and base,
promote the best, score, evaluate) for each day of the last `--days` days that has ratings. Per
evaluated day it appends one JSON line to bench/results/movielens_eval.jsonl with NDCG@10 and recall@20
of the published model, popularity, co-visitation, Base and candidate recall@C; a final line holds
each model's mean over the days it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAST = date(1998, 4, 22)  # the last day of MovieLens-100K
OVERRIDES = {"validate.min_row_ratio": 0.01, "validate.max_row_ratio": 100.0}  # lumpy days (README)


def _family(model: str) -> str:
    return model.split("@", 1)[0]


def day_metrics(cfg, ds: str) -> dict[str, dict[str, float]]:
    """{family: {ndcg@10, recall@20, users}} for ds, plus the published model's name."""
    from recsys.warehouse import connect

    con = connect(cfg, read_only=True)
    try:
        rows = con.execute("SELECT model, k, ndcg, recall, users_evaluated FROM marts.ranking_metrics "
                           "WHERE ds = ?", [ds]).fetchall()
        published = con.execute("SELECT DISTINCT model_name || '@v' || model_version FROM marts.recommendations "
                                 "WHERE ds = ?", [str(date.fromisoformat(ds) - timedelta(days=1))]).fetchall()
    finally:
        con.close()
    champion = {p[0] for p in published}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for model, k, ndcg, recall, users in rows:
        name = "champion" if model in champion else _family(model)
        if k == 10:
            out[name]["ndcg@10"] = ndcg
        if k == 20:
            out[name]["recall@20"] = recall
        if name == "candidates":
            out[name]["recall@C"] = recall
        out[name]["users"] = users
        if name == "champion":
            out[name]["model"] = model
    return dict(out)


def run(path: Path, days: int, home: Path, overrides: dict, out: Path) -> None:
    os.environ["RECSYS_HOME"] = str(home)
    from recsys.config import load_config
    from recsys.data.importers import import_movielens
    from recsys.pipeline import dates, run_stage
    from recsys.train import train_all

    cfg = load_config(overrides={**OVERRIDES, **overrides})
    import_movielens(path, cfg.paths.landing)
    first = (LAST - timedelta(days=days - 1)).isoformat()
    landed = sorted(p.name.removeprefix("ds=") for p in (cfg.paths.landing / "behaviors").iterdir())
    before = [ds for ds in landed if ds < first]
    for ds in before:
        run_stage("ingest", ds, cfg)
    for ds in before[-cfg.train.train_days:]:
        run_stage("transform", ds, cfg)
    measured = []
    for ds in dates(first, LAST.isoformat()):
        if ds not in landed:
            continue  # a day without ratings
        started = time.perf_counter()
        for stage in ("ingest", "transform", "validate"):
            run_stage(stage, ds, cfg)
        train_all(cfg, ds)  # every enabled model (din, base), as the DAG's train tasks do
        for stage in ("promote", "score", "evaluate"):
            run_stage(stage, ds, cfg)
        metrics = day_metrics(cfg, ds)
        record = {"bench": "movielens_eval", "ds": ds, "seconds": round(time.perf_counter() - started, 1),
                  "metrics": metrics, "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
        if metrics:
            measured.append(metrics)
        with out.open("a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        print(json.dumps(record, default=str), flush=True)
    summary = {"bench": "movielens_eval", "summary": True, "days_evaluated": len(measured),
               "window": [first, LAST.isoformat()], "overrides": overrides, "mean": _means(measured)}
    with out.open("a") as fh:
        fh.write(json.dumps(summary) + "\n")
    print(json.dumps(summary), flush=True)


def _means(measured: list[dict]) -> dict[str, dict[str, float]]:
    """Mean of each (model family, metric) over the days where the champion has it too (paired days)."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for metrics in measured:
        for name, values in metrics.items():
            for metric, value in values.items():
                if metric in ("ndcg@10", "recall@20", "recall@C") and value is not None:
                    sums[name][metric].append(float(value))
    return {name: {m: round(sum(v) / len(v), 4) for m, v in ms.items()} | {"days": max(len(v) for v in ms.values())}
            for name, ms in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
    parser.add_argument("--path", type=Path, default=shared)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--home", type=Path, default=None, help="RECSYS_HOME (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (YAML value)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "movielens_eval.jsonl")
    args = parser.parse_args()
    if not args.path.exists():
        sys.exit(f"{args.path} not found (MovieLens-100K is read from ../shared/data/ml-100k)")
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recsys-ml100k-") as tmp:
        run(args.path, args.days, args.home or Path(tmp), overrides, args.out)


if __name__ == "__main__":
    main()
