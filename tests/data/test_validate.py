"""Great Expectations gate: healthy data passes, bad data raises with the failed expectations."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import Config, load_config
from recsys.validate import DataValidationError, validate
from recsys.warehouse import connect

DS = "2024-01-01"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config()
    con = connect(cfg, read_only=False)
    con.execute("""
        INSERT INTO raw.behaviors
        SELECT ?::DATE, u, u + 100, 'view', ?::TIMESTAMP + to_minutes(u), NULL, NULL, 'f.csv', u + 1
        FROM range(1, 51) t(u)""", [DS, DS])
    con.close()
    return cfg


def test_healthy_raw_data_passes_and_builds_data_docs(cfg: Config) -> None:
    result = validate(cfg, DS)
    assert result.success and result.suites == {"raw_behaviors": True}
    assert result.data_docs is not None and result.data_docs.exists()


def test_bad_rows_fail_with_observed_values(cfg: Config) -> None:
    con = connect(cfg, read_only=False)
    # rows that ingest would have rejected, forced in to prove the gate catches them anyway
    con.execute("INSERT INTO raw.behaviors VALUES (?, -5, 1, 'teleport', '2024-01-03 00:00:00', NULL, NULL, "
                "'f.csv', 99)", [DS])
    con.close()
    with pytest.raises(DataValidationError) as err:
        validate(cfg, DS)
    msg = str(err.value)
    assert "expect_column_values_to_be_between({'column': 'user_id', 'min_value': 0" in msg
    assert "e.g. [-5]" in msg
    assert "expect_column_values_to_be_in_set" in msg and "'teleport'" in msg
    assert "ts_in_ds" in msg
    assert "Data Docs:" in msg


def test_row_count_drop_against_previous_day_fails(cfg: Config) -> None:
    con = connect(cfg, read_only=False)
    con.execute("DELETE FROM raw.behaviors WHERE ds = ? AND user_id > 5", [DS])  # 50 -> 5 rows
    con.execute("""
        INSERT INTO raw.behaviors
        SELECT '2023-12-31'::DATE, u, u, 'view', '2023-12-31 01:00:00', NULL, NULL, 'f.csv', u
        FROM range(1, 51) t(u)""")
    con.close()
    result = validate(cfg, DS, raise_on_failure=False)
    assert not result.success
    assert any("expect_table_row_count_to_be_between" in f and "observed 5" in f for f in result.failures)


def test_mart_label_rate_and_history_length_are_gated(cfg: Config) -> None:
    con = connect(cfg, read_only=False)
    # every example a positive and one history longer than the configured maximum
    con.execute("""
        CREATE TABLE marts.training_examples AS
        SELECT ?::DATE AS ds, 'e' || u AS example_id, u AS user_id, u AS item_id, 1 AS label,
               CASE WHEN u = 1 THEN 999 ELSE 3 END AS history_length
        FROM range(1, 21) t(u)""", [DS])
    con.close()
    result = validate(cfg, DS, raise_on_failure=False)
    assert result.suites == {"raw_behaviors": True, "training_examples": False}
    failed = "\n".join(result.failures)
    assert "expect_column_mean_to_be_between" in failed and "observed 1.0" in failed
    assert "history_length" in failed and "e.g. [999]" in failed
