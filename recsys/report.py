"""What the warehouse holds: rows per table and metrics per day (read-only, through `warehouse.reader`,
so it works while a stage writes: then it reads the writer's last published snapshot)."""

from __future__ import annotations

from recsys.config import Config
from recsys.warehouse import reader


def summary_tables(cfg: Config, k: int = 10) -> tuple[list[tuple], list[tuple]]:
    """(table, rows, days) for every warehouse table, and the @k ranking metrics per ds and model."""
    with reader(cfg) as (con, _source):
        tables = con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('raw', 'staging', 'intermediate', 'marts', 'features') "
            "AND table_type = 'BASE TABLE' ORDER BY 1").fetchall()
        counts = []
        for (name,) in tables:  # names come from the catalog, not from a user
            has_ds = con.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema || '.' || table_name = ? "
                "AND column_name = 'ds'", [name]).fetchone()[0]
            days = "count(DISTINCT ds)" if has_ds else "NULL"
            counts.append((name, *con.execute(f"SELECT count(*), {days} FROM {name}").fetchone()))
        metrics = con.execute(
            "SELECT ds, model, precision, recall, ndcg, hit_rate, users_evaluated FROM marts.ranking_metrics "
            "WHERE k = ? ORDER BY ds, model", [k]).fetchall()
    return counts, metrics
