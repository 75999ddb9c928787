"""Warehouses of an earlier layout are moved to the current one before dbt runs, without losing rows."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from recsys.warehouse import migrate_layout

OLD_EXAMPLES = """
    CREATE TABLE marts.training_examples (ds DATE, example_id VARCHAR, event_id VARCHAR, user_id BIGINT,
        item_id BIGINT, category VARCHAR, label INTEGER, negative_sampler VARCHAR, event_at TIMESTAMP, age INTEGER,
        gender VARCHAR, occupation VARCHAR, city VARCHAR, hour INTEGER, weekday INTEGER, device VARCHAR)"""
AT = datetime(2024, 1, 2, 10, 0)
# (example_id, event_id, item_id, label, sampler): e1 with ten negatives (as strings n10 sorts before n2:
# the numbers order the lists), e2 without negatives
NEGATIVES = [(f"e1-n{k}", "e1", 10 + k, 0, "popularity" if k % 3 == 0 else "uniform") for k in range(1, 11)]
EXAMPLES = [("e1", "e1", 5, 1, None), *sorted(NEGATIVES), ("e2", "e2", 9, 1, None)]
# the view models/marts/training_examples.sql gives back, per positive: its row, then one row per negative
VIEW = """
    SELECT event_id AS example_id, item_id, 1 AS label, NULL AS sampler FROM marts.training_example_lists
    UNION ALL
    SELECT event_id || '-n' || k, negative_items[k], 0, negative_samplers[k]
    FROM marts.training_example_lists, range(1, len(negative_items) + 1) AS r(k)"""


def _old_rows(example_id: str, event_id: str, item: int, label: int, sampler: str | None) -> tuple:
    return (date(2024, 1, 2), example_id, event_id, 1, item, f"c{item}", label, sampler, AT, 30, "F", "x", "y",
            10, 2, None)


def _warehouse(path: Path, layout: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA marts")
    con.execute(OLD_EXAMPLES)
    con.executemany("INSERT INTO marts.training_examples VALUES (" + ", ".join("?" * 16) + ")",
                    [_old_rows(*e) for e in EXAMPLES])
    if layout == "rows":  # session 7's layout: keyed by (event_id, negative_number), the ids a view
        con.execute("""CREATE TABLE marts.training_example_rows AS
            SELECT ds, event_id, CAST(CASE WHEN label = 1 THEN 0 ELSE CAST(substr(example_id, length(event_id) + 3)
                AS INTEGER) END AS INTEGER) AS negative_number, * EXCLUDE (ds, example_id, event_id)
            FROM marts.training_examples""")
        con.execute("DROP TABLE marts.training_examples")
        con.execute("CREATE VIEW marts.training_examples AS SELECT * FROM marts.training_example_rows")
    return con


@pytest.mark.parametrize("layout", ["table", "rows"])
def test_old_examples_move_to_one_row_per_positive_with_every_example(tmp_path: Path, layout: str) -> None:
    con = _warehouse(tmp_path / "w.duckdb", layout)
    assert migrate_layout(con)
    stored = con.execute("SELECT event_id, item_id, category, user_id, event_at, negative_items, negative_categories, "
                         "negative_samplers FROM marts.training_example_lists ORDER BY event_id").fetchall()
    assert stored == [("e1", 5, "c5", 1, AT, [n[2] for n in NEGATIVES], [f"c{n[2]}" for n in NEGATIVES],
                       [n[4] for n in NEGATIVES]), ("e2", 9, "c9", 1, AT, [], [], [])]
    assert sorted(con.execute(VIEW).fetchall()) == sorted((e[0], e[2], e[3], e[4]) for e in EXAMPLES)
    old_tables = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND "
                             "table_name IN ('training_examples', 'training_example_rows')").fetchone()[0]
    assert old_tables == 0
    assert not migrate_layout(con)  # once only
    con.close()


def test_current_layout_is_left_alone(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA marts")
    con.execute("CREATE TABLE marts.training_example_lists (ds DATE, event_id VARCHAR, negative_items BIGINT[])")
    con.execute("CREATE VIEW marts.training_examples AS SELECT ds, event_id AS example_id "
                "FROM marts.training_example_lists")
    assert not migrate_layout(con)
    con.close()


def test_two_old_layouts_at_once_are_refused(tmp_path: Path) -> None:
    con = _warehouse(tmp_path / "w.duckdb", "rows")
    con.execute("DROP VIEW marts.training_examples")
    con.execute(OLD_EXAMPLES)
    with pytest.raises(RuntimeError, match="two layouts"):
        migrate_layout(con)
    con.close()


def test_user_histories_without_history_spec_get_the_column_null(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA marts")
    con.execute("CREATE TABLE marts.user_histories (ds DATE, user_id BIGINT, item_id_history BIGINT[])")
    con.execute("INSERT INTO marts.user_histories VALUES ('2024-01-02', 1, [5, 6])")
    assert migrate_layout(con)
    columns = [c for (c,) in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                         "table_name = 'user_histories' ORDER BY ordinal_position").fetchall()]
    assert columns == ["ds", "user_id", "item_id_history", "history_spec"]  # last, as the model selects it
    # null: no later ds carries a row of the old layout forward (models/marts/user_histories.sql)
    assert con.execute("SELECT * FROM marts.user_histories").fetchall() == [(date(2024, 1, 2), 1, [5, 6], None)]
    assert not migrate_layout(con)  # once only
    con.close()
