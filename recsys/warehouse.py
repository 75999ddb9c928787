"""The DuckDB warehouse: connections, schemas and the tables Python owns.

DuckDB allows one writing process at a time, so connections are read-only unless a stage asks to
write (`connect(cfg, read_only=False)`); the Airflow DAG puts every writer in a one-slot pool.
dbt owns `staging`, `intermediate` and `marts` models; Python owns `raw.*` (ingest), `features.*`
(vocabularies) and the published tables `marts.recommendations` and `marts.ranking_metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from recsys.config import Config

SCHEMAS = ("raw", "staging", "intermediate", "marts", "features")

# raw.* mirrors the landing contract (docs/architecture.md); `source_file`/`source_line` trace every
# row back to its landing file so a rejected or suspicious row can always be found again.
RAW_DDL = {
    "raw.behaviors": """
        ds DATE NOT NULL, user_id BIGINT NOT NULL, item_id BIGINT NOT NULL,
        behavior VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, value DOUBLE, device VARCHAR,
        source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL""",
    "raw.users": """
        ds DATE NOT NULL, user_id BIGINT NOT NULL, age INTEGER, gender VARCHAR, city VARCHAR,
        occupation VARCHAR, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL""",
    "raw.items": """
        ds DATE NOT NULL, item_id BIGINT NOT NULL, category VARCHAR, brand VARCHAR, price DOUBLE,
        title VARCHAR, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL""",
    "raw.rejected_rows": """
        ds DATE NOT NULL, entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL,
        source_line BIGINT NOT NULL, reason VARCHAR NOT NULL, record VARCHAR""",
    "raw.ingest_files": """
        ds DATE NOT NULL, entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL,
        rows_in BIGINT NOT NULL, rows_accepted BIGINT NOT NULL, rows_rejected BIGINT NOT NULL""",
}

PUBLISHED_DDL = {
    # one row per (ds, registered model): which version served ds, and why (the promotion gate)
    "marts.model_promotions": """
        ds DATE NOT NULL, registered_model VARCHAR NOT NULL, challenger_version VARCHAR NOT NULL,
        champion_before VARCHAR, champion_after VARCHAR NOT NULL, decision VARCHAR NOT NULL,
        metric VARCHAR NOT NULL, challenger_value DOUBLE, champion_value DOUBLE""",
    "marts.recommendations": """
        ds DATE NOT NULL, user_id BIGINT NOT NULL, rank INTEGER NOT NULL, item_id BIGINT NOT NULL,
        score DOUBLE NOT NULL, model_name VARCHAR NOT NULL, model_version VARCHAR NOT NULL,
        candidate_source VARCHAR, explanation VARCHAR""",
    "marts.ranking_metrics": """
        ds DATE NOT NULL, model VARCHAR NOT NULL, k INTEGER NOT NULL, precision DOUBLE,
        recall DOUBLE, ndcg DOUBLE, hit_rate DOUBLE, mrr DOUBLE, coverage DOUBLE,
        users_evaluated BIGINT, users_without_positives BIGINT""",
}


def connect(cfg: Config, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the warehouse. Writers get the schemas and Python-owned tables created if missing.

    A read-only open of a warehouse that does not exist yet fails with a message that says which
    stage creates it, instead of DuckDB's bare IO error.
    """
    path = Path(cfg.paths.warehouse)
    if read_only and not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist yet; run `recsys ingest --ds <date>` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        ensure_tables(con)
    return con


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create schemas and the Python-owned tables (idempotent)."""
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for name, columns in {**RAW_DDL, **PUBLISHED_DDL}.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run a block in one transaction: everything it wrote appears at commit or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def replace_partition(con: duckdb.DuckDBPyConnection, table: str, ds: str, select_sql: str,
                      params: list | None = None) -> int:
    """Delete `table`'s rows for `ds` and insert `select_sql`'s rows, inside the caller's transaction.

    `table` must be a known constant (never user input); `ds` and `params` are bound parameters.
    Returns the number of rows inserted.
    """
    con.execute(f"DELETE FROM {table} WHERE ds = ?", [ds])
    con.execute(f"INSERT INTO {table} {select_sql}", params or [])
    return con.execute(f"SELECT count(*) FROM {table} WHERE ds = ?", [ds]).fetchall()[0][0]


def table_exists(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    schema, _, name = qualified.partition(".")
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchall()
    return bool(row[0][0])
