"""Source freshness: dbt's thresholds on the raw tables (`__sources.yml`), checked by `dbt source freshness`
for live dates only; a live transform fails on a stale feed before building anything."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import Config, load_config
from recsys.freshness import FreshnessError, check_sources, gate, is_live
from recsys.transform import build
from recsys.warehouse import connect


def seed(cfg: Config, behaviours_age: timedelta, snapshots_age: timedelta) -> None:
    """One behaviour `behaviours_age` before now and a user / item snapshot dated `snapshots_age` back."""
    now = datetime.now(UTC).replace(tzinfo=None)
    ts, snapshot_ds = now - behaviours_age, (now - snapshots_age).date()
    con = connect(cfg, read_only=False)
    try:
        con.execute("INSERT INTO raw.behaviors VALUES (?, 1, 100, 'view', ?, NULL, 'web', 'behaviors.csv', 1)",
                    [ts.date(), ts])
        con.execute("INSERT INTO raw.items VALUES (?, 100, 'a', 'brand', 9.5, 'title', 'items.csv', 1)", [snapshot_ds])
        con.execute("INSERT INTO raw.users VALUES (?, 1, 30, 'F', 'city', 'writer', 'users.csv', 1)", [snapshot_ds])
    finally:
        con.close()


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    return load_config()


def test_only_yesterday_and_today_in_the_day_time_zone_are_live() -> None:
    cfg = load_config(overrides={"ingest.day_timezone": "Asia/Shanghai"})
    assert [is_live(ds, cfg, today=date(2026, 12, 3)) for ds in ("2026-12-01", "2026-12-02", "2026-12-03")] \
        == [False, True, True]
    local_today = datetime.now(ZoneInfo("Asia/Shanghai")).date()  # without `today`: the zone's date now
    assert is_live(local_today.isoformat(), cfg)
    assert not is_live((local_today - timedelta(days=2)).isoformat(), cfg)


def test_stale_behaviours_error_and_old_snapshots_warn(cfg: Config) -> None:
    seed(cfg, behaviours_age=timedelta(hours=100), snapshots_age=timedelta(days=10))
    results = {r.source: r for r in check_sources(cfg)}
    assert {s: r.status for s, r in results.items()} == {
        "raw.behaviors": "error", "raw.items": "warn", "raw.users": "warn"}
    assert 99.9 < results["raw.behaviors"].age_hours < 101  # seconds pass between seeding and the check
    assert 240 <= results["raw.users"].age_hours < 264  # ds cast to midnight: 10 to 11 days


def tables(cfg: Config) -> set[str]:
    con = connect(cfg)
    try:
        return {f"{schema}.{name}" for schema, name in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()


def test_a_live_transform_on_a_stale_feed_fails_naming_the_source_and_builds_nothing(cfg: Config) -> None:
    seed(cfg, behaviours_age=timedelta(hours=100), snapshots_age=timedelta(days=1))
    before = tables(cfg)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    with pytest.raises(FreshnessError, match=r"raw\.behaviors: error, newest .* UTC, 10\d\.\d h old"):
        build(cfg, yesterday)
    assert tables(cfg) == before  # dbt never built: no staging view, no intermediate or mart table
    assert "intermediate.int_events_sessionized" not in before


def test_fresh_sources_pass_and_a_backfill_is_not_checked(cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    seed(cfg, behaviours_age=timedelta(hours=2), snapshots_age=timedelta(days=0))
    today = datetime.now(UTC).date()
    assert {r.status for r in gate(cfg, today.isoformat())} == {"pass"}
    with caplog.at_level("INFO", logger="recsys.freshness"):
        assert gate(cfg, (today - timedelta(days=30)).isoformat()) == []  # old data would not matter here
    assert "is a backfill" in caplog.text


def test_an_empty_snapshot_table_warns_as_having_no_rows(cfg: Config) -> None:
    seed(cfg, behaviours_age=timedelta(hours=1), snapshots_age=timedelta(days=0))
    con = connect(cfg, read_only=False)
    try:
        con.execute("DELETE FROM raw.items")  # no catalogue landed yet
    finally:
        con.close()
    items = {r.source: r for r in check_sources(cfg)}["raw.items"]
    assert (items.status, items.max_loaded_at, items.age_hours) == ("warn", None, None)
    assert items.describe() == "raw.items: warn (no rows)"


def test_cli_prints_each_source_and_exits_1_on_an_error(cfg: Config) -> None:
    seed(cfg, behaviours_age=timedelta(hours=80), snapshots_age=timedelta(days=2))
    out = CliRunner().invoke(app, ["freshness"])
    assert out.exit_code == 1, out.output
    lines = {line.split()[1]: line for line in out.output.splitlines() if "raw." in line}
    assert "error" in lines["raw.behaviors"] and "80.0" in lines["raw.behaviors"]
    assert "pass" in lines["raw.items"] and "pass" in lines["raw.users"]
