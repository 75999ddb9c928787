"""`recsys status --ds D`: what the pipeline did for one ds, read without touching anything.

Evidence per stage, from where each stage leaves it:
- ingest: `raw.ingest_files` (files, rows accepted / rejected);
- transform: rows of ds in `marts.training_examples` and `marts.scoring_candidates`;
- validate: the Great Expectations results stored under `<home>/gx/uncommitted/validations/`;
- train: registered model versions tagged `ds=D` (MLflow);
- promote: `marts.model_promotions`; score: `marts.recommendations`; evaluate: `marts.ranking_metrics`.

The warehouse is read through `warehouse.reader` (read-only; while a stage writes, the read snapshot
that writer published), so status works during a run. MLflow is read with the public client and only
when its store exists: a local store that is not there yet is reported, never created.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from recsys.config import Config
from recsys.ingest import validate_ds
from recsys.pipeline import STAGES

SCHEMAS = ("raw", "staging", "intermediate", "marts", "features")
DONE, FAILED, NOT_RUN, UNKNOWN = "done", "failed", "not run", "unknown"
NOTHING_TO_DO = "n/a"  # e.g. evaluate of the first day: no recommendations of ds-1 to measure


@dataclass
class StageState:
    stage: str
    state: str  # done | failed | not run | unknown | n/a
    detail: str = ""


@dataclass
class Status:
    ds: str
    source: str  # "live" or "snapshot <time>" (a writer was running)
    stages: list[StageState]
    rows: dict[str, int]  # table -> rows of ds (tables with a ds column)
    champion: dict[str, Any] | None
    metrics_ds: str | None  # the latest evaluated ds <= ds
    metrics: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def next_step(self) -> str | None:
        """The command that continues the pipeline for ds, or None when every stage is done."""
        for s in self.stages:
            if s.state not in (DONE, NOTHING_TO_DO, UNKNOWN):
                verb = "fix the cause, then rerun" if s.state == FAILED else "run"
                return (f"{verb}: recsys {s.stage} --ds {self.ds}   (or every stage: "
                        f"recsys run --start {self.ds} --end {self.ds})")
        return None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "next_step": self.next_step}, default=str, indent=2)


# --------------------------------------------------------------------------- warehouse


def ds_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every base table of the pipeline's schemas that has a `ds` column."""
    rows = con.execute(
        "SELECT t.table_schema || '.' || t.table_name FROM information_schema.tables t "
        "JOIN information_schema.columns c USING (table_catalog, table_schema, table_name) "
        "WHERE t.table_type = 'BASE TABLE' AND c.column_name = 'ds' AND t.table_schema IN "
        f"({', '.join('?' for _ in SCHEMAS)}) ORDER BY 1", list(SCHEMAS)).fetchall()
    return [name for (name,) in rows]


def rows_for_ds(con: duckdb.DuckDBPyConnection, ds: str) -> dict[str, int]:
    """Rows of ds per table (table names come from the catalog, ds is a bound parameter)."""
    return {t: con.execute(f"SELECT count(*) FROM {t} WHERE ds = ?", [ds]).fetchone()[0] for t in ds_tables(con)}


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> tuple | None:
    try:
        return con.execute(sql, params).fetchone()
    except duckdb.CatalogException:  # the table's stage never ran on this warehouse
        return None


def warehouse_stages(con: duckdb.DuckDBPyConnection, ds: str, rows: dict[str, int]) -> dict[str, StageState]:
    """ingest, transform, promote, score and evaluate as the warehouse shows them."""
    out = {}
    files = _one(con, "SELECT count(*), sum(rows_accepted), sum(rows_rejected) FROM raw.ingest_files WHERE ds = ?",
                 [ds])
    out["ingest"] = (StageState("ingest", DONE, f"{files[0]} files, {files[1]} rows accepted, {files[2]} rejected")
                     if files and files[0] else StageState("ingest", NOT_RUN))
    # a view of marts.training_example_lists (dbt), so not among `rows` (base tables)
    found = _one(con, "SELECT count(*) FROM marts.training_examples WHERE ds = ?", [ds])
    examples = found[0] if found else 0
    candidates = {t.split(".")[1]: n for t, n in rows.items() if t.startswith("marts.scoring_candidate") and n}
    detail = "; ".join([f"{examples} training examples", *(f"{n} rows in {t}" for t, n in candidates.items())])
    out["transform"] = (StageState("transform", DONE, detail) if examples or candidates
                        else StageState("transform", NOT_RUN))
    promo = _one(con, "SELECT decision, challenger_version, champion_before, champion_after, metric, "
                 "challenger_value, champion_value FROM marts.model_promotions WHERE ds = ? ORDER BY ALL LIMIT 1",
                 [ds])
    out["promote"] = StageState("promote", DONE, _promotion(promo)) if promo else StageState("promote", NOT_RUN)
    recs = _one(con, "SELECT count(*), count(DISTINCT user_id), any_value(model_name), any_value(model_version) "
                "FROM marts.recommendations WHERE ds = ?", [ds])
    out["score"] = (StageState("score", DONE, f"{recs[0]} recommendations for {recs[1]} users by "
                               f"{recs[2]} v{recs[3]}")
                    if recs and recs[0] else StageState("score", NOT_RUN))
    evaluated = _one(con, "SELECT count(DISTINCT model), max(users_evaluated) FROM marts.ranking_metrics "
                     "WHERE ds = ?", [ds])
    if evaluated and evaluated[0]:
        out["evaluate"] = StageState("evaluate", DONE, f"{evaluated[0]} models measured on {evaluated[1]} users")
    elif not (_one(con, "SELECT count(*) FROM marts.recommendations WHERE ds = ?::DATE - 1", [ds]) or [0])[0]:
        out["evaluate"] = StageState("evaluate", NOTHING_TO_DO, "no recommendations of the day before to measure")
    else:
        out["evaluate"] = StageState("evaluate", NOT_RUN)
    return out


def _promotion(row: tuple) -> str:
    """One line for a marts.model_promotions row."""
    decision, challenger, before, after, metric, value, before_value = row
    if before is None:
        return f"{decision}: v{challenger} ({metric} {_fmt(value)}); serving v{after}"
    return (f"{decision}: challenger v{challenger} ({metric} {_fmt(value)}) vs champion v{before} "
            f"({_fmt(before_value)}); serving v{after}")


def latest_metrics(con: duckdb.DuckDBPyConnection, ds: str, k: int = 10) -> tuple[str | None, list[dict]]:
    """The ranking metrics @k of the latest evaluated ds <= ds, one dict per model."""
    latest = _one(con, "SELECT max(ds) FROM marts.ranking_metrics WHERE ds <= ?", [ds])
    if not latest or latest[0] is None:
        return None, []
    cur = con.execute("SELECT model, precision, recall, ndcg, hit_rate, mrr, coverage, users_evaluated "
                      "FROM marts.ranking_metrics WHERE ds = ? AND k = ? ORDER BY model", [latest[0], k])
    names = [d[0] for d in cur.description]
    return str(latest[0]), [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- GX and MLflow


def validation_state(cfg: Config, ds: str) -> StageState:
    """The newest stored GX result of each suite for ds: done when all passed, failed when one did not."""
    root = Path(cfg.paths.home) / "gx" / "uncommitted" / "validations"
    newest: dict[str, Path] = {}
    for path in sorted(root.glob(f"*/*-{ds}/*/*.json")):  # <suite>/<suite>-<ds>/<run time>/<result>.json
        newest[path.parts[-4]] = path  # sorted: the last run time of each suite wins
    if not newest:
        return StageState("validate", NOT_RUN)
    failed = []
    for suite, path in sorted(newest.items()):
        try:
            ok = bool(json.loads(path.read_text()).get("success"))
        except (OSError, ValueError):
            ok = False
        if not ok:
            failed.append(suite)
    if failed:
        return StageState("validate", FAILED, f"suites failed: {', '.join(failed)} (Data Docs: "
                          f"{Path(cfg.paths.home) / 'gx/uncommitted/data_docs/local_site/index.html'})")
    return StageState("validate", DONE, f"{len(newest)} suites passed")


def mlflow_store_missing(cfg: Config) -> str | None:
    """Why MLflow cannot be read without creating something, or None when it can."""
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return f"no MLflow store yet at {uri} (the first `recsys train` creates it)"
    return None


def mlflow_facts(cfg: Config, ds: str) -> tuple[StageState, dict[str, Any] | None]:
    """The train stage (versions registered for ds) and the current champion, from the model registry."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    name = cfg.mlflow.registered_model
    try:
        versions = client.search_model_versions(f"name = '{name.replace(chr(39), chr(39) * 2)}'")
    except MlflowException:
        versions = []
    trained = sorted((v for v in versions if v.tags.get("ds") == ds), key=lambda v: int(v.version))
    train = (StageState("train", DONE, ", ".join(f"{v.tags.get('model_name', '?')} v{v.version}" for v in trained))
             if trained else StageState("train", NOT_RUN))
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return train, None
    run_metrics = {}
    if champ.run_id:
        try:
            run_metrics = client.get_run(champ.run_id).data.metrics
        except MlflowException:
            run_metrics = {}
    champion = {"registered_model": name, "version": str(champ.version),
                "model_name": champ.tags.get("model_name"), "trained_for_ds": champ.tags.get("ds"),
                "run_id": champ.run_id,
                "val_metrics": {k: v for k, v in sorted(run_metrics.items()) if k.startswith("val_")}}
    return train, champion


# --------------------------------------------------------------------------- all together


def collect(cfg: Config, ds: str, with_mlflow: bool = True) -> Status:
    """Everything `recsys status` shows for ds. Raises FileNotFoundError when there is no warehouse yet."""
    from recsys.warehouse import reader

    ds = validate_ds(ds)
    with reader(cfg) as (con, source):
        rows = rows_for_ds(con, ds)
        found = warehouse_stages(con, ds, rows)
        metrics_ds, metrics = latest_metrics(con, ds)
    found["validate"] = validation_state(cfg, ds)
    notes, champion = [], None
    missing = mlflow_store_missing(cfg) if with_mlflow else "MLflow not read (--no-mlflow)"
    if missing:
        found["train"] = StageState("train", UNKNOWN if not with_mlflow else NOT_RUN, missing)
        notes.append(missing)
    else:
        found["train"], champion = mlflow_facts(cfg, ds)
    if source != "live":
        notes.append(f"a pipeline stage is writing: warehouse figures come from the {source}")
    if not any(rows.values()):
        notes.append(f"the warehouse holds no rows for ds={ds}: land files for it "
                     f"(recsys data synth / recsys data import) and run `recsys ingest --ds {ds}`")
    return Status(ds=ds, source=source, stages=[found[s] for s in STAGES], rows=rows, champion=champion,
                  metrics_ds=metrics_ds, metrics=metrics, notes=notes)


def render(status: Status, console: Any) -> None:
    """Print a Status as rich tables (the CLI's view)."""
    from rich.table import Table

    colour = {DONE: "green", FAILED: "red", NOT_RUN: "yellow", UNKNOWN: "dim", NOTHING_TO_DO: "dim"}
    stages = Table(title=f"Stages for ds={status.ds} (warehouse: {status.source})")
    for column in ("stage", "state", "detail"):
        stages.add_column(column)
    for s in status.stages:
        stages.add_row(s.stage, f"[{colour[s.state]}]{s.state}[/]", s.detail)
    console.print(stages)
    rows = Table(title=f"Rows for ds={status.ds}")
    rows.add_column("table")
    rows.add_column("rows", justify="right")
    for table, n in status.rows.items():
        rows.add_row(table, f"{n:,}")
    console.print(rows)
    if status.champion:
        c = status.champion
        val = ", ".join(f"{k} {_fmt(v)}" for k, v in c["val_metrics"].items()) or "no val_ metrics"
        console.print(f"Champion: {c['registered_model']} v{c['version']} ({c['model_name']}, trained for "
                      f"ds={c['trained_for_ds']}; {val})")
    else:
        console.print("Champion: none yet (the first `recsys promote` makes one)")
    if status.metrics:
        metrics = Table(title=f"Ranking metrics @10 on ds={status.metrics_ds} (lists of the day before)")
        short = {"precision": "P", "recall": "R", "ndcg": "NDCG", "hit_rate": "HR", "mrr": "MRR",
                 "coverage": "cov", "users_evaluated": "users"}
        for column in status.metrics[0]:
            metrics.add_column(short.get(column, column), no_wrap=True)
        for m in status.metrics:
            metrics.add_row(*(_fmt(v) for v in m.values()))
        console.print(metrics)
    else:
        console.print(f"Ranking metrics: none up to ds={status.ds} (evaluate needs two consecutive days)")
    for note in status.notes:
        console.print(f"[yellow]note:[/] {note}")
    step = status.next_step
    console.print(f"next: {step}" if step else "[green]every stage ran for this ds[/]")
