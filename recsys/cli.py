"""`recsys`: one command per stage, plus data tools, `run`, `summary` and `sql`.

Every stage command is a thin front door to the same function the Airflow DAG calls.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from recsys.config import Config, load_config

app = typer.Typer(help="Nightly batch recommendations: ingest, dbt, GX, DIN/DIEN/DSIN, score, evaluate.",
                  no_args_is_help=True)
data_app = typer.Typer(help="Demo data and importers for public formats.", no_args_is_help=True)
import_app = typer.Typer(help="Import a public data set into the landing layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
console = Console()
err_console = Console(stderr=True)

DsOpt = Annotated[str, typer.Option("--ds", help="Logical date YYYY-MM-DD.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config (default conf/recsys.yaml).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: section.key=value.")]


def _config(config: Path | None, overrides: list[str] | None = None) -> Config:
    parsed = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects section.key=value, got {item!r}")
        parsed[key] = json.loads(value) if value[:1] in "[{0123456789-" or value in ("true", "false") \
            else value
    return load_config(config, parsed)


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(1)


def _stage(name: str, ds: str, config: Path | None, overrides: list[str] | None, **kwargs) -> None:
    from recsys.pipeline import run_stage

    try:
        summary = run_stage(name, ds, _config(config, overrides), **kwargs)
    except Exception as exc:  # the CLI shows every stage failure as one readable line
        _fail(exc)
    console.print_json(json.dumps(summary, default=str))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def ingest(ds: DsOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Load ds's landing files into raw.* (bad rows -> raw.rejected_rows)."""
    _stage("ingest", ds, config, set_)


@app.command()
def transform(ds: DsOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """dbt build for ds: staging -> sessionized events -> marts, with dbt tests."""
    _stage("transform", ds, config, set_)


@app.command()
def validate(ds: DsOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Great Expectations suites on raw behaviours and marts; fails on bad data."""
    _stage("validate", ds, config, set_)


@app.command()
def train(ds: DsOpt,
          model: Annotated[str | None, typer.Option(help="din | dien | dsin | base (default: train.model).")] = None,
          config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Train a model on the window ending at ds, log it to MLflow and register it."""
    _stage("train", ds, config, set_, model_name=model)


@app.command()
def promote(ds: DsOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Move @champion to ds's best challenger only if it beats the champion's GAUC on ds by promote.margin."""
    _stage("promote", ds, config, set_)


@app.command()
def score(ds: DsOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Rank every active user's candidates with @champion -> marts.recommendations."""
    _stage("score", ds, config, set_)


@app.command()
def evaluate(ds: DsOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Recommendations of ds-1 vs behaviours of ds -> marts.ranking_metrics."""
    _stage("evaluate", ds, config, set_)


@app.command()
def run(start: Annotated[str, typer.Option(help="First ds.")],
        end: Annotated[str, typer.Option(help="Last ds (inclusive).")],
        config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Every stage for each date in order, without Airflow (same functions as the DAG)."""
    from recsys.pipeline import run_range

    cfg = _config(config, set_)

    def show(stage: str, summary: dict) -> None:
        console.print(f"[green]done[/] {stage}: {json.dumps(summary, default=str)[:200]}")

    try:
        run_range(cfg, start, end, on_stage=show)
    except Exception as exc:
        _fail(exc)


@app.command()
def summary(config: ConfigOpt = None) -> None:
    """Rows per warehouse table and ranking metrics per day."""
    from recsys.report import summary_tables

    try:
        counts, metrics = summary_tables(_config(config))
    except Exception as exc:
        _fail(exc)
    _print_table("Warehouse tables (rows)", ["table", "rows", "days"], counts)
    _print_table("Ranking metrics @10 (recommendations of ds-1 vs behaviour of ds)",
                 ["ds", "model", "precision", "recall", "ndcg", "hit_rate", "users"], metrics)


@app.command()
def sql(query: Annotated[str, typer.Argument(help="SQL to run on a read-only connection.")],
        config: ConfigOpt = None) -> None:
    """Query the warehouse read-only: no writes, no files (COPY TO, ATTACH), no extensions.

    While a pipeline stage writes, the query runs on the read snapshot the writer last published
    (said on stderr) instead of failing on DuckDB's file lock.
    """
    from recsys.warehouse import reader

    try:
        with reader(_config(config)) as (con, source):
            cur = con.execute(query)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchall()
    except Exception as exc:
        _fail(exc)
    if source != "live":
        err_console.print(f"note: a pipeline stage is writing; read from the {source}")
    _print_table(None, columns, rows)


@app.command()
def status(ds: DsOpt, config: ConfigOpt = None,
           mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Read the model registry.")] = True,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """Which stages ran for ds, rows per table, the champion and the last metrics (read-only)."""
    from recsys.status import collect, render

    try:
        with err_console.status(f"reading the warehouse{' and MLflow' if mlflow else ''} for ds={ds} ..."):
            result = collect(_config(config), ds, with_mlflow=mlflow)
    except Exception as exc:
        _fail(exc)
    if as_json:
        console.print_json(result.to_json())
    else:
        render(result, console)


@app.command()
def freshness(config: ConfigOpt = None) -> None:
    """How old the newest landed behaviours and snapshots are (`dbt source freshness`); exit 1 on an error.

    The thresholds are in dbt_project/models/staging/__sources.yml. dbt opens the warehouse for writing, so
    this waits while a pipeline stage writes.
    """
    from recsys.freshness import check_sources
    from recsys.warehouse import writer_lock

    try:
        cfg = _config(config)
        with writer_lock(cfg):
            results = check_sources(cfg)
    except Exception as exc:
        _fail(exc)
    _print_table("Source freshness", ["source", "status", "newest (UTC)", "age h"],
                 [(r.source, r.status, r.max_loaded_at or r.message,
                  "" if r.age_hours is None else f"{r.age_hours:.1f}") for r in results])
    if any(r.failed for r in results):
        raise typer.Exit(1)


def _print_table(title: str | None, columns: list[str], rows: list[tuple]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


@data_app.command("synth")
def data_synth(days: Annotated[int, typer.Option(help="Number of days.")] = 5,
               users: Annotated[int, typer.Option(help="Number of users.")] = 300,
               items: Annotated[int, typer.Option(help="Number of items.")] = 500,
               seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
               start: Annotated[str, typer.Option(help="First ds.")] = "2024-01-01",
               landing: Annotated[Path | None, typer.Option(help="Landing root (default: config).")] = None,
               fmt: Annotated[str, typer.Option("--format", help="parquet | csv | jsonl")] = "parquet",
               config: ConfigOpt = None) -> None:
    """Write realistic demo behaviour logs and snapshots into the landing layout."""
    from recsys.data.synth import synthesize

    target = landing or _config(config).paths.landing
    result = synthesize(target, days=days, users=users, items=items, seed=seed,
                        start=_date("--start", start), fmt=fmt)
    console.print(f"wrote {result.events} events for {result.days} days to {target}")


def _date(option: str, value: str) -> date:
    """A YYYY-MM-DD option as a date; anything else is a usage error naming the option (no traceback)."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"expected a date YYYY-MM-DD, got {value!r}", param_hint=option) from None


def _window(option: str, value: str | None) -> date | None:
    return _date(option, value) if value else None


@import_app.command("movielens")
def import_movielens(path: Annotated[Path, typer.Argument(help="Folder (or a file in it) of a MovieLens release.")],
                     start: Annotated[str | None, typer.Option(help="First ds to keep.")] = None,
                     end: Annotated[str | None, typer.Option(help="Last ds to keep.")] = None,
                     landing: Annotated[Path | None, typer.Option(help="Landing root.")] = None,
                     config: ConfigOpt = None) -> None:
    """MovieLens (u.data/u.item/u.user, ratings.csv/movies.csv or ml-100k.inter/.user/.item)."""
    from recsys.data.importers import import_movielens as run_import

    try:
        window = _window("--start", start), _window("--end", end)
        result = run_import(path, landing or _config(config).paths.landing, *window)
    except Exception as exc:
        _fail(exc)
    console.print(result)


@import_app.command("taobao")
def import_taobao(path: Annotated[Path, typer.Argument(help="Tianchi UserBehavior.csv.")],
                  start: Annotated[str, typer.Option(help="First Beijing date kept.")] = "2017-11-25",
                  end: Annotated[str, typer.Option(help="Last Beijing date kept.")] = "2017-12-03",
                  landing: Annotated[Path | None, typer.Option(help="Landing root.")] = None,
                  config: ConfigOpt = None) -> None:
    """Taobao UserBehavior.csv (no header; days in Beijing time; rows outside the window rejected)."""
    from recsys.data.importers import import_taobao as run_import

    try:
        result = run_import(path, landing or _config(config).paths.landing,
                            _date("--start", start), _date("--end", end))
    except Exception as exc:
        _fail(exc)
    console.print(result)
    console.print("Taobao days are Beijing days: ingest them with ingest.day_timezone: Asia/Shanghai "
                  "(config file, or --set ingest.day_timezone=Asia/Shanghai).")
