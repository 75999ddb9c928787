"""Synthetic shop logs: deterministic, on contract, and carrying the structure the models are meant to learn
(power-law popularity, sessions, focused sessions, interest drift, sequential category signal)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import load_config
from recsys.data.landing import write_partition
from recsys.data.synth import DayLog, generate, synthesize
from recsys.ingest import ingest

START = date(2024, 3, 1)
GAP_S = 30 * 60


@pytest.fixture(scope="module")
def logs() -> list[DayLog]:
    return list(generate(days=14, users=1000, items=500, seed=11, start=START))


@pytest.fixture(scope="module")
def events(logs: list[DayLog]) -> dict[str, np.ndarray]:
    """All events as arrays sorted by user then time: user, ts (s), session, category, day, behavior."""
    cols = {
        "user": np.concatenate([d.behaviors["user_id"].to_numpy() for d in logs]),
        "ts": np.concatenate([d.behaviors["ts"].to_numpy().astype("datetime64[s]").astype(np.int64)
                              for d in logs]),
        "session": np.concatenate([d.session for d in logs]),
        "category": np.concatenate([d.category for d in logs]),
        "day": np.concatenate([np.full(d.behaviors.num_rows, i) for i, d in enumerate(logs)]),
        "behavior": np.concatenate([d.behaviors["behavior"].to_numpy(zero_copy_only=False) for d in logs]),
    }
    order = np.lexsort((cols["ts"], cols["user"]))
    return {k: v[order] for k, v in cols.items()}


def _read_all(root: Path) -> dict[str, pa.Table]:
    return {str(p.relative_to(root)): pq.read_table(p) for p in sorted(root.rglob("*.parquet"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    synthesize(a, days=3, users=50, items=80, seed=4)
    synthesize(b, days=3, users=50, items=80, seed=4)
    synthesize(c, days=3, users=50, items=80, seed=5)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    ta, tc = _read_all(a), _read_all(c)
    assert ta.keys() == tc.keys()
    assert any(not ta[k].equals(tc[k]) for k in ta)


def test_summary_and_layout(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, days=4, users=40, items=60, seed=1, start=START)
    days = [(START + timedelta(days=i)).isoformat() for i in range(4)]
    assert list(summary.per_ds) == days and summary.days == 4 and summary.path == tmp_path
    assert summary.events == sum(summary.per_ds.values()) > 0
    for ds, n in summary.per_ds.items():
        files = list((tmp_path / "behaviors" / f"ds={ds}").iterdir())
        assert [f.name for f in files] == ["part-000.parquet"] and pq.read_table(files[0]).num_rows == n
    assert sorted(p.name for p in (tmp_path / "users").iterdir()) == [f"ds={days[0]}", f"ds={days[2]}"]
    assert [p.name for p in (tmp_path / "items").iterdir()] == [f"ds={days[0]}"]


def test_schema_matches_landing_contract(logs: list[DayLog]) -> None:
    behaviors = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("behavior", pa.string()),
                           ("ts", pa.timestamp("us")), ("value", pa.float64()), ("device", pa.string())])
    assert all(d.behaviors.schema == behaviors for d in logs)
    assert logs[0].users.schema == pa.schema([("user_id", pa.int64()), ("age", pa.int32()),
                                              ("gender", pa.string()), ("city", pa.string()),
                                              ("occupation", pa.string())])
    assert logs[0].items.schema == pa.schema([("item_id", pa.int64()), ("category", pa.string()),
                                              ("brand", pa.string()), ("price", pa.float64()),
                                              ("title", pa.string())])
    users, items = logs[0].users.to_pydict(), logs[0].items.to_pydict()
    assert users["user_id"] == list(range(1, 1001)) and items["item_id"] == list(range(1, 501))
    assert min(users["age"]) >= 18 and max(users["age"]) <= 70 and set(users["gender"]) == {"M", "F"}
    assert 5 <= len(set(users["city"])) <= 10 and 5 <= len(set(users["occupation"])) <= 10
    assert 20 <= len(set(items["category"])) <= 50 and min(items["price"]) > 0
    assert all(t.startswith(b) for t, b in zip(items["title"], items["brand"], strict=True))
    # a brand belongs to one category
    pairs = set(zip(items["brand"], items["category"], strict=True))
    assert len({b for b, _ in pairs}) == len(pairs)
    devices = set(np.concatenate([d.behaviors["device"].to_numpy(zero_copy_only=False) for d in logs]))
    assert devices == {"ios", "android", "web"}


def test_users_change_city_on_a_later_snapshot(logs: list[DayLog]) -> None:
    changed = [d for d in logs[1:] if d.users is not None]
    assert len(changed) == 1
    rows = changed[0].users.to_pylist()
    before = {r["user_id"]: r for r in logs[0].users.to_pylist()}
    assert 1 <= len(rows) <= 50
    for r in rows:
        assert r["city"] != before[r["user_id"]]["city"]
        assert {k: v for k, v in r.items() if k != "city"} == \
               {k: v for k, v in before[r["user_id"]].items() if k != "city"}


def test_every_ts_inside_its_ds(logs: list[DayLog]) -> None:
    for d in logs:
        ts = d.behaviors["ts"].to_numpy()
        day = np.datetime64(d.ds, "us")
        assert d.behaviors.num_rows > 0
        assert ts.min() >= day and ts.max() < day + np.timedelta64(1, "D")


def test_behaviour_mix_like_a_shop(events: dict[str, np.ndarray]) -> None:
    names, counts = np.unique(events["behavior"], return_counts=True)
    share = dict(zip(names, counts / counts.sum(), strict=True))
    assert 0.85 <= share["view"] <= 0.90
    assert 0.05 <= share["cart"] <= 0.07
    assert 0.03 <= share["fav"] <= 0.05
    assert 0.01 <= share["buy"] <= 0.02


def test_non_views_act_on_an_item_viewed_earlier_in_the_session(logs: list[DayLog]) -> None:
    for d in logs[:3]:
        b = d.behaviors
        seen = set()
        keys = zip(d.session, b["item_id"].to_pylist(), b["behavior"].to_pylist(), strict=True)
        for session, item, behavior in keys:  # rows are in time order; a few thousand rows
            if behavior == "view":
                seen.add((session, item))
            else:
                assert (session, item) in seen


def test_popularity_is_power_law(events: dict[str, np.ndarray], logs: list[DayLog]) -> None:
    items = np.concatenate([d.behaviors["item_id"].to_numpy() for d in logs])
    counts = np.sort(np.bincount(items, minlength=501)[1:])[::-1]
    assert counts[:50].sum() / counts.sum() > 0.4          # top 10% of items
    assert counts[:5].sum() > 10 * counts[-250:].sum() / 50  # head items far above the tail


def test_sessions_are_bursts_separated_by_long_gaps(events: dict[str, np.ndarray]) -> None:
    same_user = events["user"][1:] == events["user"][:-1]
    same_session = events["session"][1:] == events["session"][:-1]
    gap = np.diff(events["ts"])
    inside, between = gap[same_user & same_session], gap[same_user & ~same_session]
    assert len(inside) > 1000 and len(between) > 1000
    assert inside.max() < GAP_S and between.min() > GAP_S
    assert np.median(inside) < 5 * 60 and np.median(between) > 60 * 60
    # a 30-minute gap rule recovers exactly the generated sessions
    starts = np.r_[True, ~same_user | (gap > GAP_S)]
    assert np.array_equal(starts, np.r_[True, ~(same_user & same_session)])


def test_a_session_is_focused_on_one_category(events: dict[str, np.ndarray]) -> None:
    sessions, sess_idx = np.unique(events["session"], return_inverse=True)
    pairs, pair_count = np.unique(sess_idx * 1000 + events["category"], return_counts=True)
    dominant = np.zeros(len(sessions))
    np.maximum.at(dominant, pairs // 1000, pair_count)
    size = np.bincount(sess_idx)
    assert np.mean(dominant / size) > 0.85
    assert np.mean(dominant[size >= 4] / size[size >= 4]) > 0.75


def test_interests_drift_over_days(events: dict[str, np.ndarray]) -> None:
    def profile(days: np.ndarray) -> np.ndarray:
        mask = np.isin(events["day"], days)
        hist = np.zeros((events["user"].max() + 1, events["category"].max() + 1))
        np.add.at(hist, (events["user"][mask], events["category"][mask]), 1.0)
        return hist

    def mean_tv(x: np.ndarray, y: np.ndarray) -> float:
        ok = (x.sum(1) >= 5) & (y.sum(1) >= 5)
        xn, yn = x[ok] / x[ok].sum(1, keepdims=True), y[ok] / y[ok].sum(1, keepdims=True)
        return float(0.5 * np.abs(xn - yn).sum(1).mean())

    first = profile(np.arange(0, 3))
    near, far = mean_tv(first, profile(np.arange(3, 6))), mean_tv(first, profile(np.arange(11, 14)))
    # sampling noise is the same in both; only drift makes far-apart days differ more
    assert far > near + 0.04


def test_next_category_is_predictable_from_the_previous(events: dict[str, np.ndarray]) -> None:
    same_user = events["user"][1:] == events["user"][:-1]
    cat = events["category"]
    repeat = np.mean((cat[1:] == cat[:-1])[same_user])
    p = np.bincount(cat) / len(cat)
    chance = float((p ** 2).sum())  # same category by independent draws from the marginal
    assert repeat > 0.6 and repeat > 4 * chance


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_ingest_accepts_every_synthetic_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fmt: str) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config()
    summary = synthesize(cfg.paths.landing, days=3, users=30, items=50, seed=2, start=START, fmt=fmt)
    for ds, n in summary.per_ds.items():
        result = ingest(cfg, ds)
        assert result.counts["behaviors"].accepted == n and result.counts["behaviors"].rejected == 0
        assert all(c.rejected == 0 for c in result.counts.values())
    first = ingest(cfg, START.isoformat()).counts
    assert first["users"].accepted == 30 and first["items"].accepted == 50


def test_write_partition_replaces_older_files(tmp_path: Path) -> None:
    table = pa.table({"user_id": pa.array([1, 2], pa.int64()),
                      "ts": pa.array([datetime(2024, 1, 1, 8), datetime(2024, 1, 1, 9)], pa.timestamp("us"))})
    first = write_partition(tmp_path, "behaviors", "2024-01-01", table, fmt="csv")
    (first.parent / "stale.jsonl").write_text("{}\n")
    second = write_partition(tmp_path, "behaviors", date(2024, 1, 1), table.slice(0, 1))
    assert [p.name for p in second.parent.iterdir()] == ["part-000.parquet"]
    assert pq.read_table(second).num_rows == 1
    with pytest.raises(ValueError, match="format"):
        write_partition(tmp_path, "behaviors", "2024-01-01", table, fmt="xlsx")
