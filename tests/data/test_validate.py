"""Great Expectations gate: healthy data passes, bad data raises with the failed expectations, their
observed values and the path of the Data Docs page, which exists."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from feature_store.spec import load_spec
from recsys.config import Config, load_config
from recsys.validate import _E, DataValidationError, Expectation, validate
from recsys.warehouse import connect

DS, PREV = "2024-01-01", "2023-12-31"
MARTS = ["user_features", "item_features", "user_histories", "training_examples", "training_histories",
         "scoring_candidates"]


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


def execute(cfg: Config, sql: str, params: list | None = None) -> None:
    con = connect(cfg, read_only=False)
    try:
        con.execute(sql, params or [])
    finally:
        con.close()


def create_marts(cfg: Config, ds: str = DS, users: int = 20, history: int = 3) -> None:
    """Healthy marts of ds with the real column shapes: every user has one positive and 4 negatives, and the
    positive's history row (training_histories, shared by the 5 examples through event_id)."""
    con = connect(cfg, read_only=False)
    try:
        con.execute("""
            CREATE TABLE IF NOT EXISTS marts.user_features AS
            SELECT ?::DATE AS ds, u AS user_id, (20 + u)::INTEGER AS age, 'F' AS gender, 'nurse' AS occupation,
                   'Berlin' AS city, 1::BIGINT AS events_1d, 2::BIGINT AS events_7d, 3::BIGINT AS events_30d,
                   0::INTEGER AS days_since_last_event
            FROM range(1, ? + 1) t(u) WHERE false""", [ds, users])
        con.execute("""
            INSERT INTO marts.user_features
            SELECT ?::DATE, u, 20 + u, 'F', 'nurse', 'Berlin', 1, 2, 3, 0 FROM range(1, ? + 1) t(u)""", [ds, users])
        con.execute("""
            CREATE TABLE IF NOT EXISTS marts.item_features (ds DATE, item_id BIGINT, category VARCHAR,
                brand VARCHAR, price DOUBLE, events_7d BIGINT, buys_7d BIGINT)""")
        con.execute("""
            INSERT INTO marts.item_features
            SELECT ?::DATE, i, 'c' || (i % 3), 'b', i * 1.5, 4, 1 FROM range(100, 200) t(i)""", [ds])
        con.execute("""
            CREATE TABLE IF NOT EXISTS marts.user_histories (ds DATE, user_id BIGINT, item_id_history BIGINT[],
                category_history VARCHAR[], behavior_history VARCHAR[], event_at_history TIMESTAMP[],
                session_number_history INTEGER[], history_length INTEGER)""")
        con.execute("""
            INSERT INTO marts.user_histories
            SELECT ?::DATE, u, list_transform(range(?), lambda k: 100 + k), list_transform(range(?), lambda k: 'c1'),
                   list_transform(range(?), lambda k: 'view'),
                   list_transform(range(?), lambda k: ?::TIMESTAMP + to_hours(k)),
                   list_transform(range(?), lambda k: 1), ?
            FROM range(1, ? + 1) t(u)""", [ds, history, history, history, history, ds, history, history, users])
        con.execute("""
            CREATE TABLE IF NOT EXISTS marts.training_examples (ds DATE, example_id VARCHAR, event_id VARCHAR,
                user_id BIGINT, item_id BIGINT, category VARCHAR, label INTEGER, event_at TIMESTAMP)""")
        con.execute("""
            INSERT INTO marts.training_examples
            SELECT ?::DATE, u || '-' || n, u || '-0', u, 100 + u + n, 'c1', CASE WHEN n = 0 THEN 1 ELSE 0 END,
                   ?::TIMESTAMP + to_hours(12)
            FROM range(1, ? + 1) t(u), range(5) s(n)""", [ds, ds, users])
        con.execute("""
            CREATE TABLE IF NOT EXISTS marts.training_histories (ds DATE, event_id VARCHAR, user_id BIGINT,
                event_at TIMESTAMP, item_id_history BIGINT[], category_history VARCHAR[], behavior_history VARCHAR[],
                session_number_history INTEGER[], history_length INTEGER)""")
        con.execute("""
            INSERT INTO marts.training_histories
            SELECT ?::DATE, u || '-0', u, ?::TIMESTAMP + to_hours(12), list_transform(range(?), lambda k: 100 + k),
                   list_transform(range(?), lambda k: 'c1'), list_transform(range(?), lambda k: 'view'),
                   list_transform(range(?), lambda k: 1), ?
            FROM range(1, ? + 1) t(u)""", [ds, ds, history, history, history, history, history, users])
        con.execute("""
            CREATE TABLE IF NOT EXISTS marts.scoring_candidates (ds DATE, user_id BIGINT, item_id BIGINT,
                category VARCHAR, candidate_source VARCHAR)""")
        con.execute("""
            INSERT INTO marts.scoring_candidates
            SELECT ?::DATE, u, 150 + k, 'c1', 'global_popular' FROM range(1, ? + 1) t(u), range(10) s(k)""",
                    [ds, users])
    finally:
        con.close()


def failures_of(cfg: Config) -> tuple[dict[str, bool], str]:
    result = validate(cfg, DS, raise_on_failure=False)
    return result.suites, "\n".join(result.failures)


def test_healthy_raw_data_passes_and_builds_data_docs(cfg: Config) -> None:
    result = validate(cfg, DS)
    assert result.success and result.suites == {"raw_behaviors": True}
    assert result.rows == {"raw_behaviors": 50}
    assert result.data_docs is not None and result.data_docs.name == "index.html" and result.data_docs.exists()
    # the run's validation result has its own page in the site, named after the suite
    pages = list((result.data_docs.parent / "validations" / "raw_behaviors").rglob("*.html"))
    assert pages, "no Data Docs page for the raw_behaviors validation result"


def test_bad_rows_fail_with_observed_values_and_docs_path(cfg: Config) -> None:
    # rows that ingest would have rejected, forced in to prove the gate catches them anyway
    execute(cfg, "INSERT INTO raw.behaviors VALUES (?, -5, 1, 'teleport', '2024-01-03 00:00:00', NULL, NULL, "
                 "'f.csv', 99)", [DS])
    with pytest.raises(DataValidationError) as err:
        validate(cfg, DS)
    msg = str(err.value)
    assert "raw_behaviors: expect_column_values_to_be_between({'column': 'user_id', 'min_value': 0" in msg
    assert "e.g. [-5]" in msg
    assert "expect_column_values_to_be_in_set" in msg and "'teleport'" in msg
    assert "'column': 'ts_days_from_ds'" in msg and "e.g. [2]" in msg  # two days after ds
    assert len(err.value.failures) == 3
    docs = err.value.data_docs
    assert docs is not None and docs.exists() and f"Data Docs: {docs}" in msg


def test_row_count_drop_against_previous_day_fails(cfg: Config) -> None:
    execute(cfg, "DELETE FROM raw.behaviors WHERE ds = ? AND user_id > 5", [DS])  # 50 -> 5 rows
    execute(cfg, """
        INSERT INTO raw.behaviors
        SELECT ?::DATE, u, u, 'view', '2023-12-31 01:00:00', NULL, NULL, 'f.csv', u FROM range(1, 51) t(u)""",
            [PREV])
    suites, failed = failures_of(cfg)
    assert not suites["raw_behaviors"]
    # 50 rows the day before and min_row_ratio 0.2: at least 10
    assert "expect_table_row_count_to_be_between({'min_value': 10, 'max_value': 251}): observed 5" in failed


def test_empty_day_fails_with_a_clear_message(cfg: Config) -> None:
    execute(cfg, "DELETE FROM raw.behaviors WHERE ds = ?", [DS])
    with pytest.raises(DataValidationError) as err:
        validate(cfg, DS)
    msg = str(err.value)
    assert "expect_table_row_count_to_be_between({'min_value': 1}): observed 0" in msg
    assert f"raw.behaviors holds no rows for ds={DS}: an empty day publishes nothing" in msg


def test_healthy_marts_pass_every_suite(cfg: Config) -> None:
    create_marts(cfg)
    result = validate(cfg, DS)
    assert result.suites == {"raw_behaviors": True, **dict.fromkeys(MARTS, True)}
    # the big marts are validated one row per user, the others one row per user / item
    assert result.rows == {"raw_behaviors": 50, "user_features": 20, "item_features": 100, "user_histories": 20,
                           "training_examples": 20, "training_histories": 20, "scoring_candidates": 20}


def test_negative_price_fails_the_item_suite(cfg: Config) -> None:
    create_marts(cfg)
    execute(cfg, "UPDATE marts.item_features SET price = -2.5 WHERE item_id = 150")
    with pytest.raises(DataValidationError) as err:
        validate(cfg, DS)
    msg = str(err.value)
    assert "item_features: expect_column_values_to_be_between({'column': 'price', 'min_value': 0" in msg
    assert "1 unexpected (1.00%), e.g. [-2.5]" in msg
    assert err.value.failures == [line for line in err.value.failures if line.startswith("item_features:")]
    assert err.value.data_docs is not None and err.value.data_docs.exists()


def test_history_longer_than_the_contract_fails(cfg: Config) -> None:
    max_len = load_spec(cfg.paths.feature_specs)["item_id_history"].max_len
    create_marts(cfg)
    too_long = max_len + 1
    execute(cfg, """
        UPDATE marts.training_histories SET item_id_history = list_transform(range(?), lambda k: 100 + k)
        WHERE user_id = 3""", [too_long])
    execute(cfg, "UPDATE marts.user_histories SET history_length = ? WHERE user_id = 4", [too_long])
    suites, failed = failures_of(cfg)
    assert not suites["training_histories"] and not suites["user_histories"] and suites["training_examples"]
    assert (f"training_histories: expect_column_values_to_be_between({{'column': 'item_id_history__len', "
            f"'min_value': 0, 'max_value': {max_len}") in failed
    assert f"e.g. [{too_long}]" in failed
    # the longer list no longer matches history_length: the lists are not parallel any more
    assert "training_histories: expect_column_values_to_be_between({'column': 'misaligned_histories'" in failed
    assert "e.g. [1]" in failed  # user 3's one positive
    assert "user_histories: expect_column_values_to_be_between({'column': 'history_length'" in failed
    assert "user_histories: expect_column_pair_values_to_be_equal" in failed


def test_history_limit_comes_from_the_feature_contract(cfg: Config, tmp_path: Path) -> None:
    spec = yaml.safe_load(Path(cfg.paths.feature_specs).read_text())
    for f in spec["features"]:
        if f.get("kind") == "sequence":
            f["max_len"] = 2
    path = tmp_path / "specs.yaml"
    path.write_text(yaml.safe_dump(spec))
    short = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, feature_specs=path))
    create_marts(short, history=3)
    result = validate(short, DS, raise_on_failure=False)
    failed = "\n".join(result.failures)
    assert "'column': 'item_id_history__len', 'min_value': 0, 'max_value': 2" in failed
    assert "'column': 'category_history__len', 'min_value': 0, 'max_value': 2" in failed
    assert validate(cfg, DS).success  # the same data under the real contract passes


def test_sessions_beyond_the_contract_fail(cfg: Config) -> None:
    """DSIN sessions ([S][L] lists): at most max_sessions sessions of at most max_len behaviours each."""
    session = load_spec(cfg.paths.feature_specs)["session_item_ids"]
    limit_s, limit_l = session.max_sessions, session.max_len
    create_marts(cfg)
    execute(cfg, "ALTER TABLE marts.training_histories ADD COLUMN session_item_ids BIGINT[][] DEFAULT [[101, 102]]")
    execute(cfg, "ALTER TABLE marts.user_histories ADD COLUMN session_item_ids BIGINT[][] DEFAULT [[101]]")
    assert validate(cfg, DS).success
    execute(cfg, "UPDATE marts.training_histories SET session_item_ids = list_transform(range(?), lambda s: [7]) "
                 "WHERE user_id = 5", [limit_s + 1])
    execute(cfg, "UPDATE marts.user_histories SET session_item_ids = [list_transform(range(?), lambda k: 7)] "
                 "WHERE user_id = 6", [limit_l + 2])
    suites, failed = failures_of(cfg)
    assert (f"training_histories: expect_column_values_to_be_between({{'column': 'session_item_ids__sessions', "
            f"'min_value': 0, 'max_value': {limit_s}}}): observed 1 unexpected (5.00%), e.g. [{limit_s + 1}]") in failed
    assert (f"user_histories: expect_column_values_to_be_between({{'column': 'session_item_ids__session_len', "
            f"'min_value': 0, 'max_value': {limit_l}}}): observed 1 unexpected (5.00%), e.g. [{limit_l + 2}]") in failed


def test_label_rate_and_event_times_are_gated(cfg: Config) -> None:
    create_marts(cfg)
    execute(cfg, "UPDATE marts.training_examples SET label = 1")
    execute(cfg, "UPDATE marts.training_examples SET event_at = event_at + INTERVAL 1 DAY WHERE user_id = 2")
    execute(cfg, "UPDATE marts.user_histories SET event_at_history = [?::TIMESTAMP + INTERVAL 30 HOUR] "
                 "WHERE user_id = 2", [DS])
    suites, failed = failures_of(cfg)
    assert "expect_column_mean_to_be_between({'column': 'label_rate', 'min_value': 0.1, 'max_value': 0.4}): " \
           "observed 1.0" in failed
    assert "'column': 'last_event_days_from_ds', 'min_value': 0, 'max_value': 0" in failed
    assert "user_histories: expect_column_values_to_be_between({'column': 'last_event_days_from_ds'" in failed
    assert suites["scoring_candidates"] and suites["item_features"]


def test_null_rate_jump_against_previous_day_fails(cfg: Config) -> None:
    create_marts(cfg, ds=PREV)
    create_marts(cfg)
    execute(cfg, "UPDATE marts.user_features SET age = NULL WHERE ds = ? AND user_id <= 10", [DS])
    execute(cfg, "UPDATE marts.item_features SET category = NULL WHERE ds = ? AND item_id < 105", [DS])
    suites, failed = failures_of(cfg)
    # yesterday 0% null, allowed +10 points: 50% of ages fails, 5% of categories passes
    assert "expect_column_mean_to_be_between({'column': 'age_null', 'min_value': 0, 'max_value': 0.1}): " \
           "observed 0.5" in failed
    assert suites["item_features"]
    assert not suites["user_features"]


def test_candidates_per_user_are_capped(cfg: Config) -> None:
    create_marts(cfg)
    cap = cfg.features.candidates_per_user
    execute(cfg, "INSERT INTO marts.scoring_candidates SELECT ?::DATE, 7, 1000 + k, 'c1', 'global_popular' "
                 "FROM range(?) t(k)", [DS, cap])
    suites, failed = failures_of(cfg)
    assert not suites["scoring_candidates"]
    assert f"'column': 'candidates', 'min_value': 0, 'max_value': {cap}" in failed and f"e.g. [{cap + 10}]" in failed


def test_validate_opens_the_warehouse_read_only(cfg: Config) -> None:
    """A reader (another validate, a notebook) may hold the file: validate must not need the write lock."""
    create_marts(cfg)
    reader = duckdb.connect(str(cfg.paths.warehouse), read_only=True)
    try:
        assert validate(cfg, DS).success
    finally:
        reader.close()


def test_suites_are_described_without_great_expectations_and_built_by_it() -> None:
    """The frames are read while GX imports, so describing a suite must not import it; building the
    description gives GX's own expectation, and a misspelt one fails there."""
    probe = ("import sys; from recsys.validate import _E; "
             "e = _E().ExpectColumnValuesToBeBetween(column='n', min_value=0, max_value=3); "
             "print(e.name, 'great_expectations' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["ExpectColumnValuesToBeBetween", "False"], out

    from great_expectations.expectations import ExpectColumnValuesToBeBetween

    built = _E().ExpectColumnValuesToBeBetween(column="n", min_value=0, max_value=3).build()
    assert isinstance(built, ExpectColumnValuesToBeBetween)
    assert (built.column, built.min_value, built.max_value) == ("n", 0, 3)
    with pytest.raises(AttributeError, match="ExpectColumnValuesToBeBetwen"):
        Expectation("ExpectColumnValuesToBeBetwen", {"column": "n"}).build()
