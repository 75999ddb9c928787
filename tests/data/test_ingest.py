"""Ingest: every bad row lands in raw.rejected_rows with its file, line and rule; counts reconcile;
failures leave the warehouse untouched; reruns are idempotent."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import Config, load_config
from recsys.ingest import IngestError, ingest, partition_dir, validate_ds

DS = "2024-01-01"
HEADER = "user_id,item_id,behavior,ts,value,device\n"
GOOD = [f"{u},{u + 10},view,2024-01-01T0{u % 10}:00:00,,web\n" for u in range(1, 41)]


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    return load_config(overrides={"ingest.max_reject_rate": 0.5})


def write(cfg: Config, name: str, content: str | bytes, entity: str = "behaviors", ds: str = DS) -> Path:
    folder = partition_dir(cfg.paths.landing, entity, ds)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def rows(cfg: Config, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(cfg.paths.warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def rejected(cfg: Config) -> dict[int, str]:
    return dict(rows(cfg, "SELECT source_line, reason FROM raw.rejected_rows WHERE entity = 'behaviors'"))


BAD_LINES = {  # bad CSV line -> the exact reject reason
    "7,8,view\n": "malformed_row (expected 6 fields, got 3)",
    "7,8,view,2024-01-01T01:00:00,,web,extra\n": "malformed_row (expected 6 fields, got 7)",
    ",8,view,2024-01-01T01:00:00,,\n": "user_id_null",
    "-3,8,view,2024-01-01T01:00:00,,\n": "user_id_negative",
    "abc,8,view,2024-01-01T01:00:00,,\n": "user_id_not_integer",
    "1.5,8,view,2024-01-01T01:00:00,,\n": "user_id_not_integer",
    "99999999999999999999999,8,view,2024-01-01T01:00:00,,\n": "user_id_not_integer",
    "7,,view,2024-01-01T01:00:00,,\n": "item_id_null",
    "7,-8,view,2024-01-01T01:00:00,,\n": "item_id_negative",
    "7,8,,2024-01-01T01:00:00,,\n": "behavior_null",
    "7,8,teleport,2024-01-01T01:00:00,,\n": "behavior_unknown",
    "7,8,view,,,\n": "ts_null",
    "7,8,view,yesterday,,\n": "ts_unparseable",
    "7,8,view,2024-01-02T00:00:00,,\n": "ts_outside_ds",
    "7,8,view,2023-12-31T23:59:59,,\n": "ts_outside_ds",
    "7,8,view,2024-01-01T02:00:00+05:00,,\n": "ts_outside_ds",  # 2023-12-31 21:00 UTC
    "7,8,rating,2024-01-01T01:00:00,five,\n": "value_not_numeric",
    "1,11,view,2024-01-01T01:00:00,,web\n": "duplicate_event",  # same event as GOOD[0]
    ",,,,,\n": "empty_row",
}


def test_each_bad_line_gets_its_exact_reason(cfg: Config) -> None:
    bad = list(BAD_LINES)
    path = write(cfg, "events.csv", HEADER + "".join(GOOD) + "".join(bad))
    result = ingest(cfg, DS)
    got = rejected(cfg)
    for i, line in enumerate(bad):
        assert got[len(GOOD) + 2 + i] == BAD_LINES[line], line
    c = result.counts["behaviors"]
    assert (c.rows_in, c.accepted, c.rejected) == (len(GOOD) + len(bad), len(GOOD), len(bad))
    assert rows(cfg, "SELECT DISTINCT source_file FROM raw.rejected_rows") == [(str(path),)]


def test_accepted_rows_are_typed_and_traceable(cfg: Config) -> None:
    write(cfg, "a.csv", HEADER + "5,9,Rating,1704067200,4.5,ios\n6,9,view,2024-01-01 10:00:00Z,,\n")
    ingest(cfg, DS)
    got = rows(cfg, "SELECT user_id, behavior, ts::VARCHAR, value, device, source_line FROM raw.behaviors "
                    "ORDER BY source_line")
    assert got == [(5, "rating", "2024-01-01 00:00:00", 4.5, "ios", 2),
                   (6, "view", "2024-01-01 10:00:00", None, None, 3)]


def test_jsonl_bad_lines_and_non_utf8(cfg: Config) -> None:
    lines = [b'{"user_id": 1, "item_id": 2, "behavior": "view", "ts": "2024-01-01T01:00:00"}',
             b'{not json',
             b'[1, 2]',
             b'{"user_id": 1, "item_id": 3, "behavior": "vi\xff\xfeew", "ts": "2024-01-01T01:00:00"}',
             b'{"user_id": 2, "item_id": 3, "ts": "2024-01-01T01:00:00"}']
    write(cfg, "b.jsonl", b"\n".join(lines) + b"\n")
    write(cfg, "a.csv", HEADER + "".join(GOOD))
    ingest(cfg, DS)
    got = dict(rows(cfg, "SELECT source_line, reason FROM raw.rejected_rows WHERE source_file LIKE '%.jsonl'"))
    assert got == {2: "malformed_row (not a JSON object)", 3: "malformed_row (not a JSON object)",
                   4: "invalid_utf8", 5: "behavior_null"}


def test_non_utf8_csv_cell_rejects_only_its_row(cfg: Config) -> None:
    write(cfg, "a.csv", HEADER.encode() + "".join(GOOD).encode() + b"7,8,v\xe9iew,2024-01-01T01:00:00,,\n")
    ingest(cfg, DS)
    assert rejected(cfg) == {len(GOOD) + 2: "invalid_utf8 (column behavior)"}


def test_parquet_with_timezone_and_missing_optional_columns(cfg: Config) -> None:
    folder = partition_dir(cfg.paths.landing, "behaviors", DS)
    folder.mkdir(parents=True)
    ts = pa.array([1704070800_000_000, 1704070800_000_000], pa.timestamp("us", "Asia/Shanghai"))
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [3, -4], "behavior": ["buy", "buy"], "ts": ts}),
                   folder / "p.parquet")
    ingest(cfg, DS)
    assert rows(cfg, "SELECT user_id, ts::VARCHAR FROM raw.behaviors") == [(1, "2024-01-01 01:00:00")]
    assert rejected(cfg) == {2: "item_id_negative"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda cfg: None, "no landing files for ds=2024-01-01 (rule: partition_present"),
        (lambda cfg: write(cfg, "a.csv", ""), "files hold no rows (rule: partition_not_empty)"),
        (lambda cfg: write(cfg, "a.csv", "user_id,item_id,behavior\n1,2,view\n"),
         "missing required column(s) ['ts'] (rule: required_columns"),
        (lambda cfg: write(cfg, "t.parquet", b"PAR1\x00\x01garbage"), "unreadable file (rule: readable_file)"),
        (lambda cfg: write(cfg, "a.csv", HEADER + "".join(GOOD[:5]) + "x,1,view,,,\n" * 6),
         "rejected (54.5% > max_reject_rate 50.0%)"),
    ],
    ids=["missing-partition", "empty-file", "missing-column", "truncated-parquet", "reject-rate"],
)
def test_failures_name_file_and_rule_and_write_nothing(cfg: Config, setup, message: str) -> None:
    write(cfg, "a.csv", HEADER + "".join(GOOD).replace("2024-01-01", "2023-12-31"), ds="2023-12-31")
    ingest(cfg, "2023-12-31")  # an earlier, healthy partition must survive the failure untouched
    before = rows(cfg, "SELECT count(*) FROM raw.behaviors")
    setup(cfg)
    with pytest.raises(IngestError) as err:
        ingest(cfg, DS)
    assert message in str(err.value)
    if "rule: readable_file" in message or "required_columns" in message:
        assert str(partition_dir(cfg.paths.landing, "behaviors", DS)) in str(err.value)
    assert rows(cfg, "SELECT count(*) FROM raw.behaviors") == before
    assert rows(cfg, "SELECT count(*) FROM raw.rejected_rows WHERE ds = ?", [DS]) == [(0,)]


def test_reject_rate_error_names_file_line_and_rule(cfg: Config) -> None:
    path = write(cfg, "a.csv", HEADER + "".join(GOOD[:5]) + "x,1,view,,,\n" * 6)
    with pytest.raises(IngestError, match=rf"of {path} broke rule 'user_id_not_integer' \(first at line 7\)"):
        ingest(cfg, DS)


def test_rerun_is_idempotent_and_replaces_the_partition(cfg: Config) -> None:
    write(cfg, "a.csv", HEADER + "".join(GOOD) + "".join(BAD_LINES))
    write(cfg, "u.csv", "user_id,age,gender,city,occupation\n1,30,F,Paris,artist\n1,31,F,Paris,artist\n",
          entity="users")
    write(cfg, "i.csv", "item_id,category,brand,price\n11,shoes,acme,-1\n12,shoes,acme,9.5\n", entity="items")

    def snapshot() -> list:
        tables = ["raw.behaviors", "raw.users", "raw.items", "raw.rejected_rows", "raw.ingest_files"]
        return [rows(cfg, f"SELECT * FROM {t} ORDER BY ALL") for t in tables]

    ingest(cfg, DS)
    first = snapshot()
    ingest(cfg, DS)
    assert snapshot() == first
    assert rows(cfg, "SELECT entity, source_line, reason FROM raw.rejected_rows WHERE entity <> 'behaviors' "
                     "ORDER BY ALL") == [("items", 2, "price_negative"), ("users", 3, "duplicate_user")]
    # a corrected landing file replaces the partition instead of appending to it
    write(cfg, "a.csv", HEADER + "".join(GOOD[:3]))
    ingest(cfg, DS)
    assert rows(cfg, "SELECT count(*) FROM raw.behaviors WHERE ds = ?", [DS]) == [(3,)]


def test_counts_reconcile_per_file(cfg: Config) -> None:
    write(cfg, "a.csv", HEADER + "".join(GOOD) + "".join(BAD_LINES))
    write(cfg, "b.csv", HEADER + "1,99,buy,2024-01-01T05:00:00,,\n")
    result = ingest(cfg, DS)
    per_file = rows(cfg, "SELECT sum(rows_in), sum(rows_accepted), sum(rows_rejected) FROM raw.ingest_files "
                         "WHERE entity = 'behaviors'")
    c = result.counts["behaviors"]
    assert per_file == [(c.rows_in, c.accepted, c.rejected)]
    assert c.rows_in == len(GOOD) + len(BAD_LINES) + 1
    assert sum(c.rejected_by_reason.values()) == c.rejected


@pytest.mark.parametrize("ds", ["2024-1-1", "2024-01-01'; DROP TABLE raw.behaviors; --", "", "20240101"])
def test_hostile_or_malformed_ds_is_refused(ds: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        validate_ds(ds)


def test_business_day_in_another_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taobao's days are Beijing days: 2024-01-01 00:30 Beijing is 2023-12-31 16:30 UTC and belongs to ds."""
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides={"ingest.day_timezone": "Asia/Shanghai", "ingest.max_reject_rate": 0.5})
    write(cfg, "a.csv", HEADER + "1,2,view,2023-12-31T16:30:00,,\n2,2,view,2024-01-01T16:30:00,,\n"
                                 "3,2,view,2024-01-01T15:59:59,,\n")
    ingest(cfg, DS)
    assert rows(cfg, "SELECT user_id, ts::VARCHAR FROM raw.behaviors ORDER BY 1") == [
        (1, "2023-12-31 16:30:00"), (3, "2024-01-01 15:59:59")]
    assert rejected(cfg) == {3: "ts_outside_ds"}
    with pytest.raises(ValueError, match="not an IANA time zone"):
        ingest(cfg.with_overrides({"ingest.day_timezone": "Mars/Olympus"}), DS)


def test_business_day_across_a_daylight_saving_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Berlin skips 02:00-03:00 on 2024-03-31: that day is 23 hours, 2024-03-30 23:00 to 03-31 22:00 UTC."""
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides={"ingest.day_timezone": "Europe/Berlin", "ingest.max_reject_rate": 0.6})
    ds = "2024-03-31"
    write(cfg, "a.csv", HEADER + "1,2,view,2024-03-30T22:59:59,,\n2,2,view,2024-03-30T23:00:00,,\n"
                                 "3,2,view,2024-03-31T21:59:59,,\n4,2,view,2024-03-31T22:00:00,,\n", ds=ds)
    ingest(cfg, ds)
    assert rows(cfg, "SELECT user_id FROM raw.behaviors ORDER BY 1") == [(2,), (3,)]
    assert rejected(cfg) == {2: "ts_outside_ds", 5: "ts_outside_ds"}
