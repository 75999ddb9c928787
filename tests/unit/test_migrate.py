"""Warehouses of an earlier layout are moved to the current one before dbt runs, without losing rows."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb

from recsys.warehouse import migrate_layout

OLD_EXAMPLES = """
    CREATE TABLE marts.training_examples (ds DATE, example_id VARCHAR, event_id VARCHAR, user_id BIGINT,
        item_id BIGINT, category VARCHAR, label INTEGER, negative_sampler VARCHAR, event_at TIMESTAMP, age INTEGER,
        gender VARCHAR, occupation VARCHAR, city VARCHAR, hour INTEGER, weekday INTEGER, device VARCHAR)"""
# the expression of models/marts/training_examples.sql, which must give the old ids back
VIEW_ID = "CASE WHEN negative_number = 0 THEN event_id ELSE event_id || '-n' || negative_number END"


def _old_warehouse(path: Path) -> list[tuple]:
    at = datetime(2024, 1, 2, 10, 0)
    rows = [(date(2024, 1, 2), eid, "e1", 1, item, "c", label, sampler, at, 30, "F", "x", "y", 10, 2, None)
            for eid, item, label, sampler in (("e1", 5, 1, None), ("e1-n1", 6, 0, "uniform"),
                                               ("e1-n2", 7, 0, "popularity"), ("e1-n10", 8, 0, "uniform"))]
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA marts")
    con.execute(OLD_EXAMPLES)
    con.executemany("INSERT INTO marts.training_examples VALUES (" + ", ".join("?" * 16) + ")", rows)
    con.close()
    return rows


def test_old_examples_table_moves_to_example_rows_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    old = _old_warehouse(path)
    con = duckdb.connect(str(path))
    assert migrate_layout(con)
    columns = [r[0] for r in con.execute("DESCRIBE marts.training_example_rows").fetchall()]
    assert columns[:4] == ["ds", "event_id", "negative_number", "user_id"] and "example_id" not in columns
    moved = con.execute(f"SELECT {VIEW_ID} AS example_id, negative_number, item_id, negative_sampler "
                        "FROM marts.training_example_rows ORDER BY item_id").fetchall()
    assert moved == [(r[1], n, r[4], r[7]) for r, n in zip(old, (0, 1, 2, 10), strict=True)]
    assert not con.execute("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_name = 'training_examples'").fetchone()[0]
    assert not migrate_layout(con)  # once only
    con.close()


def test_current_layout_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA marts")
    con.execute("CREATE TABLE marts.training_example_rows (ds DATE, event_id VARCHAR, negative_number INTEGER)")
    con.execute("CREATE VIEW marts.training_examples AS SELECT ds, event_id AS example_id "
                "FROM marts.training_example_rows")
    assert not migrate_layout(con)
    con.close()
