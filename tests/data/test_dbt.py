"""The dbt project on hand-made raw rows: sessions, histories, training examples, candidates, reruns, failures.

One module-scoped warehouse is built for three consecutive days (three `dbt build` invocations); the
tests read it. Sessions use the default 30-minute gap; histories are capped at 3 so capping shows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.config import Config, load_config
from recsys.transform import TransformError, TransformResult, build, dbt_args, project_fingerprint
from recsys.warehouse import connect

D1, D2, D3 = "2024-01-01", "2024-01-02", "2024-01-03"
MAX_LEN, NEGATIVES, PER_USER = 3, 2, 4
SESSIONS, SESSION_LEN = 2, 2  # DSIN: the last 2 sessions of at most 2 behaviours each
MARTS = ["marts.user_histories", "marts.user_features", "marts.item_features", "marts.training_examples",
         "marts.training_histories", "marts.scoring_candidates"]
# every example with its positive's history row (stored once per positive, shared by event_id)
# the leakage test and the table of failures it reads (built per user bucket before it)
LEAKAGE_CHECK = "int_history_leakage_failures assert_no_history_leakage"
EXAMPLES_WITH_HISTORY = ("(SELECT e.*, h.* EXCLUDE (ds, event_id, user_id, event_at) FROM marts.training_examples e "
                         "JOIN marts.training_histories h USING (ds, event_id))")

# (ds, user, item, behavior, time of day): user 1 shows the gap edges and a tie at one instant, user 2 a
# session that runs over midnight into the next ds, user 3 a single event, user 4 only a profile, user 5
# makes items 105/106 popular in category 'a' on D1
BEHAVIORS = [
    (D1, 1, 100, "view", "10:00:00"),
    (D1, 1, 100, "view", "10:00:00"),  # the same line landed twice: one event
    (D1, 1, 101, "view", "10:30:00"),  # exactly 30 minutes later: same session
    (D1, 1, 101, "cart", "11:01:00"),  # 31 minutes later: new session
    (D1, 1, 102, "view", "11:01:00"),  # same instant as the cart: ordered after it by item_id
    (D1, 2, 107, "view", "23:50:00"),
    (D1, 5, 105, "view", "08:00:00"),
    (D1, 5, 106, "view", "08:05:00"),
    (D1, 5, 105, "buy", "08:10:00"),
    (D2, 2, 108, "view", "00:10:00"),  # 20 minutes after yesterday's last event: same session
    (D2, 2, 100, "view", "00:40:00"),
    (D2, 2, 110, "view", "01:11:00"),
    (D2, 1, 101, "buy", "09:00:00"),
    (D2, 1, 103, "view", "09:10:00"),
    (D2, 3, 114, "view", "12:00:00"),
    (D3, 1, 104, "view", "20:00:00"),
]
# (user_id, item_id, behavior) -> (session_number, event_number)
EXPECTED_SESSIONS = {
    (1, 100, "view"): (1, 1), (1, 101, "view"): (1, 2), (1, 101, "cart"): (2, 3), (1, 102, "view"): (2, 4),
    (1, 101, "buy"): (3, 5), (1, 103, "view"): (3, 6), (1, 104, "view"): (4, 7),
    (2, 107, "view"): (1, 1), (2, 108, "view"): (1, 2), (2, 100, "view"): (1, 3), (2, 110, "view"): (2, 4),
    (3, 114, "view"): (1, 1),
    (5, 105, "view"): (1, 1), (5, 106, "view"): (1, 2), (5, 105, "buy"): (1, 3),
}


def category_of(item: int) -> str:
    return "a" if item < 107 else "b" if item < 114 else "c"


def seed_raw(cfg: Config) -> None:
    """Raw rows as ingest would write them: behaviours, a catalogue (item 100 recategorised on D2), profiles."""
    con = connect(cfg, read_only=False)
    try:
        con.executemany("INSERT INTO raw.behaviors VALUES (?, ?, ?, ?, ?, NULL, 'web', 'behaviors.csv', ?)",
                        [[ds, u, i, b, f"{ds} {t}", n] for n, (ds, u, i, b, t) in enumerate(BEHAVIORS)])
        con.executemany("INSERT INTO raw.items VALUES (?, ?, ?, 'brand', 9.5, 'title', 'items.csv', ?)",
                        [[D1, i, category_of(i), i] for i in range(100, 120)] + [[D2, 100, "z", 1]])
        con.executemany("INSERT INTO raw.users VALUES (?, ?, ?, 'F', 'city', 'writer', 'users.csv', ?)",
                        [[D1, 1, 30, 1], [D1, 2, 40, 2], [D1, 4, 50, 4], [D3, 1, 31, 5]])
    finally:
        con.close()


def query(cfg: Config, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of a read-only query; the connection is closed again before the next dbt run."""
    con = connect(cfg)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def digest(cfg: Config, tables: list[str]) -> dict[str, tuple[int, str]]:
    """Row count and order-independent content hash per table."""
    out = {}
    for table in tables:
        rows = query(cfg, f"SELECT * FROM {table} ORDER BY ALL")
        out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


@dataclass
class Built:
    cfg: Config
    results: dict[str, TransformResult]
    parsed_paths: dict[str, int]  # files dbt parsed in each build (perf_info.json of its parse)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    home = tmp_path_factory.mktemp("dbt_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_HOME", str(home))
    cfg = load_config(overrides={"features.history_max_len": MAX_LEN, "features.negatives_per_positive": NEGATIVES,
                                 "features.popularity_negatives_per_positive": 1,
                                 "features.dsin_max_sessions": SESSIONS, "features.dsin_session_len": SESSION_LEN,
                                 "features.candidates_per_user": PER_USER, "features.candidate_window_days": 2})
    seed_raw(cfg)
    results, parsed_paths = {}, {}
    for ds in (D1, D2, D3):
        results[ds] = build(cfg, ds)
        perf = json.loads((Path(cfg.paths.dbt_target) / "perf_info.json").read_text())
        parsed_paths[ds] = perf["parsed_path_count"]
    yield Built(cfg, results, parsed_paths)
    mp.undo()


def events(cfg: Config) -> list[tuple]:
    return query(cfg, "SELECT user_id, item_id, behavior, event_at, event_number, session_number, category, ds "
                      "FROM intermediate.int_events_sessionized ORDER BY user_id, event_number")


def test_sessions_split_exactly_at_the_gap(built: Built) -> None:
    rows = events(built.cfg)
    assert {(u, i, b): (s, n) for u, i, b, _, n, s, _, _ in rows} == EXPECTED_SESSIONS
    assert len(rows) == len(EXPECTED_SESSIONS)  # the duplicated line counts once
    ids = query(built.cfg, "SELECT user_id, session_number, count(DISTINCT session_id) FROM "
                           "intermediate.int_events_sessionized GROUP BY ALL")
    assert all(n == 1 for _, _, n in ids)  # one id per session, also across the D1 -> D2 boundary
    n_ids = query(built.cfg, "SELECT count(DISTINCT session_id) FROM intermediate.int_events_sessionized")[0][0]
    assert n_ids == len(ids)  # and no two sessions share an id


def test_event_category_is_as_of_the_events_day(built: Built) -> None:
    categories = {(u, i, str(ds)): c for u, i, _, _, _, _, c, ds in events(built.cfg)}
    assert categories[(1, 100, D1)] == "a"  # item 100 was recategorised on D2
    assert categories[(2, 100, D2)] == "z"
    assert categories[(3, 114, D2)] == "c"


def test_user_histories_oldest_first_and_capped(built: Built) -> None:
    rows = query(built.cfg, "SELECT ds, user_id, item_id_history, behavior_history, session_number_history, "
                            "event_at_history, history_length FROM marts.user_histories ORDER BY ds, user_id")
    hist = {(str(ds), u): (items, behaviors, sessions, times, n)
            for ds, u, items, behaviors, sessions, times, n in rows}
    assert hist[(D1, 1)][:3] == ([101, 101, 102], ["view", "cart", "view"], [1, 2, 2])
    assert hist[(D3, 1)][:3] == ([101, 103, 104], ["buy", "view", "view"], [3, 3, 4])
    assert hist[(D2, 3)][0] == [114] and hist[(D2, 3)][4] == 1
    assert (D1, 3) not in hist and (D1, 4) not in hist  # no behaviour yet, no history
    for items, _, _, times, n in hist.values():
        assert n == len(items) <= MAX_LEN and times == sorted(times)


def test_training_histories_strictly_before_the_event(built: Built) -> None:
    by_user = defaultdict(list)
    for u, i, b, at, _, s, c, _ in events(built.cfg):
        by_user[u].append((at, i, b, s, c))
    examples = query(built.cfg, "SELECT ds, user_id, item_id, label, event_at, item_id_history, behavior_history, "
                                "session_number_history, category_history, history_length, age "
                                f"FROM {EXAMPLES_WITH_HISTORY} ORDER BY ds, event_at, example_id")
    positives = [e for e in examples if e[3] == 1]
    assert len(positives) == len(EXPECTED_SESSIONS)  # every event of every ds, once
    # every example found its positive's history row; one history row per positive
    assert len(examples) == query(built.cfg, "SELECT count(*) FROM marts.training_examples")[0][0]
    assert query(built.cfg, "SELECT count(*) FROM marts.training_histories")[0][0] == len(positives)
    for ds, user, _, _, at, items, behaviors, sessions, categories, length, _ in examples:
        before = [e for e in by_user[user] if e[0] < at][-MAX_LEN:]  # recomputed: strictly earlier, last N
        assert items == [e[1] for e in before] and behaviors == [e[2] for e in before], (ds, user, at)
        assert sessions == [e[3] for e in before] and categories == [e[4] for e in before]
        assert length == len(before)
    history = {(u, i, str(at.time())): (items, behaviors) for _, u, i, _, at, items, behaviors, *_ in positives}
    assert history[(1, 102, "11:01:00")] == ([100, 101], ["view", "view"])  # the cart at 11:01 is not history
    assert history[(1, 101, "09:00:00")] == ([101, 101, 102], ["view", "cart", "view"])  # capped at 3
    ages = {(str(ds), u): age for ds, u, _, label, *_, age in examples if label == 1}
    assert ages[(D2, 1)] == 30 and ages[(D3, 1)] == 31  # profile as of each ds


def test_negatives_untouched_shared_context_and_counted(built: Built) -> None:
    rows = query(built.cfg, f"""
        SELECT t.ds, t.user_id, t.item_id, t.label, t.event_at, t.item_id_history, t.category,
               (SELECT count(*) FROM intermediate.int_events_sessionized e
                WHERE e.user_id = t.user_id AND e.item_id = t.item_id AND e.ds <= t.ds) AS touched
        FROM {EXAMPLES_WITH_HISTORY} t""")
    negatives = [r for r in rows if r[3] == 0]
    assert negatives and all(r[7] == 0 for r in negatives)  # never an item the user touched up to ds
    assert len(negatives) == NEGATIVES * (len(rows) - len(negatives))  # 20 items: no shortfall here
    positives = {(r[0], r[1], r[4]): r[5] for r in rows if r[3] == 1}
    for ds, user, item, _, at, items, category, _ in negatives:
        assert positives[(ds, user, at)] == items  # the positive's history and time
        assert category == ("z" if item == 100 and str(ds) >= D2 else category_of(item))  # as of ds


def test_scoring_candidates_exclude_touched_items(built: Built) -> None:
    rows = query(built.cfg, "SELECT ds, user_id, item_id, candidate_source FROM marts.scoring_candidates")
    touched = {(str(ds), u, i) for u, i, *_, ds in events(built.cfg)}
    assert rows
    per_user = defaultdict(list)
    for ds, user, item, _ in rows:
        assert not any((d, user, item) in touched for d in (D1, D2, D3) if d <= str(ds)), (ds, user, item)
        per_user[(str(ds), user)].append(item)
    assert all(len(items) == len(set(items)) <= PER_USER for items in per_user.values())
    assert {u for _, u in per_user} == {1, 2, 3, 4, 5}  # user 4: a profile but no behaviour (cold start)
    # D1 popularity: 101 and 105 (2 events), then 100, 102, 106, 107; every top category here is 'a' or 'b'
    day1 = {(u, i, c, s) for u, i, c, s in query(
        built.cfg, "SELECT user_id, item_id, category, candidate_source FROM marts.scoring_candidates WHERE ds = ?",
        [D1])}
    assert day1 == {
        (1, 105, "a", "category_popular"), (1, 106, "a", "category_popular"), (1, 107, "b", "global_popular"),
        (2, 101, "a", "global_popular"), (2, 105, "a", "global_popular"), (2, 100, "a", "global_popular"),
        (2, 102, "a", "global_popular"),  # capped at 4; 107, the only 'b' item, is user 2's own
        (5, 101, "a", "category_popular"), (5, 100, "a", "category_popular"), (5, 102, "a", "category_popular"),
        (5, 107, "b", "global_popular"),
        (4, 101, "a", "cold_start_popular"), (4, 105, "a", "cold_start_popular"),
        (4, 100, "a", "cold_start_popular"), (4, 102, "a", "cold_start_popular"),
    }


def test_user_features_include_profile_only_users(built: Built) -> None:
    rows = query(built.cfg, "SELECT user_id, age, events_1d, events_7d, days_since_last_event "
                            "FROM marts.user_features WHERE ds = ? ORDER BY user_id", [D3])
    assert rows == [(1, 31, 1, 7, 0), (2, 40, 0, 4, 1), (3, None, 0, 1, 1), (4, 50, 0, 0, None), (5, None, 0, 3, 2)]


def test_rerunning_a_ds_changes_no_table(built: Built) -> None:
    tables = [*MARTS, "intermediate.int_events_sessionized"]
    before = digest(built.cfg, tables)
    again = build(built.cfg, D2)  # after D3 was built: replaces D2 only, reproducibly
    assert digest(built.cfg, tables) == before
    assert again.project_sha256 == built.results[D2].project_sha256


def test_full_refresh_rebuilds_events_and_keeps_past_mart_partitions(built: Built) -> None:
    tables = [*MARTS, "intermediate.int_events_sessionized"]
    before = digest(built.cfg, tables)
    build(built.cfg, D3, full_refresh=True)  # intermediate from scratch; marts refuse a full refresh
    assert digest(built.cfg, tables) == before
    assert rebuilt_after(built.cfg)[D3] is None  # every day rebuilt: the event tests read them all
    days = query(built.cfg, "SELECT DISTINCT ds FROM marts.training_examples ORDER BY ds")
    assert [str(d) for (d,) in days] == [D1, D2, D3]


def test_result_names_nodes_and_hashes_the_manifest(built: Built) -> None:
    result = built.results[D3]
    manifest = Path(built.cfg.paths.dbt_target) / "manifest.json"
    assert set(result.models) >= {"int_events_sessionized", "training_examples", "training_histories",
                                  "scoring_candidates"}
    assert "test.recsys.assert_no_history_leakage" in result.nodes and result.tests_passed > 20
    assert any(n.startswith("unit_test.recsys.int_events_sessionized.") for n in result.nodes)
    assert result.project_sha256 == project_fingerprint(manifest)
    assert len(result.manifest_sha256) == 64 and result.project_sha256 == built.results[D1].project_sha256


def relocated(cfg: Config, home: Path) -> Config:
    """The same config with its own warehouse and dbt target under home."""
    return dataclasses.replace(cfg, paths=dataclasses.replace(
        cfg.paths, home=home, warehouse=home / "recsys.duckdb", dbt_target=home / "target"))


def warehouse_copy(built: Built, home: Path) -> Config:
    """A config over a copy of the built warehouse under home: tests tamper with the copy, never the shared build."""
    cfg = relocated(built.cfg, home)
    shutil.copy(built.cfg.paths.warehouse, cfg.paths.warehouse)
    return cfg


def tamper(cfg: Config, sql: str, params: list[str]) -> int:
    """Run one writing statement on cfg's warehouse; the number of rows it changed."""
    con = connect(cfg, read_only=False)
    try:
        return con.execute(sql, params).fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize(("days", "threads"), [([D3], "1"), ([D1, D3], "2")],
                         ids=["one-full-build", "catch-up-after-a-skipped-day-two-dbt-threads"])
def test_incremental_runs_equal_a_full_build(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             days: list[str], threads: str) -> None:
    # RECSYS_DBT_THREADS (profiles.yml) runs independent models at once: the rows must not depend on it
    monkeypatch.setenv("RECSYS_DBT_THREADS", threads)
    cfg = relocated(built.cfg, tmp_path)
    seed_raw(cfg)
    for ds in days:
        build(cfg, ds)
    assert f"Concurrency: {threads} threads" in (tmp_path / "dbt" / "logs" / "dbt.log").read_text()
    events_table = ["intermediate.int_events_sessionized"]
    assert digest(cfg, events_table) == digest(built.cfg, events_table)
    # the first build rebuilt every day; a catch-up the days after the last one built (its tests read them)
    assert rebuilt_after(cfg) == {days[0]: None} | dict(zip(days[1:], days, strict=False))
    for table in MARTS:
        d3 = f"(SELECT * FROM {table} WHERE ds = '{D3}')"
        assert digest(cfg, [d3]) == digest(built.cfg, [d3]), table


def rebuilt_after(cfg: Config) -> dict[str, str | None]:
    """Per ds built: the last day of int_events_sessionized that ds's build kept (None: it rebuilt every day)."""
    rows = query(cfg, "SELECT ds, rebuilt_after FROM intermediate.int_events_sessionized_builds")
    return {str(ds): None if after is None else str(after) for ds, after in rows}


# the last event of ds gets the id of the first one: a duplicate event_id within that day
DUPLICATE_EVENT_ID = """UPDATE intermediate.int_events_sessionized
    SET event_id = (SELECT min(event_id) FROM intermediate.int_events_sessionized WHERE ds = $1)
    WHERE ds = $1 AND event_id = (SELECT max(event_id) FROM intermediate.int_events_sessionized WHERE ds = $1)"""


def tampered_events(built: Built, home: Path, day: str) -> Config:
    """A copy of the built warehouse with a duplicate event_id on day and no record of rebuilt days yet
    (as before the records existed): the next build writes the first record and its tests must use it."""
    cfg = warehouse_copy(built, home)
    with closing(connect(cfg, read_only=False)) as con:
        con.execute("DROP TABLE intermediate.int_events_sessionized_builds")
    assert tamper(cfg, DUPLICATE_EVENT_ID, [day]) == 1
    return cfg


def test_event_tests_skip_the_days_a_build_kept(built: Built, tmp_path: Path) -> None:
    # a D3 build rebuilds D3 and keeps D1, D2: its tests on int_events_sessionized read D2 and D3 only, so
    # the nightly cost does not grow with the history (a broken D1 was D1's build's to catch)
    cfg = tampered_events(built, tmp_path, D1)
    build(cfg, D3, select="int_events_sessionized")
    assert rebuilt_after(cfg) == {D3: D2}


def test_event_tests_read_the_last_day_a_build_kept(built: Built, tmp_path: Path) -> None:
    # the last kept day is read too: the one day a rewritten event could also have landed in
    cfg = tampered_events(built, tmp_path, D2)
    with pytest.raises(TransformError, match="unique_int_events_sessionized_event_id"):
        build(cfg, D3, select="int_events_sessionized")


def mark_user_histories(cfg: Config, ds: str, history_spec: str) -> int:
    """Shift every item id of ds's user_histories by 1000 and set its history_spec (a SQL expression)."""
    return tamper(cfg, "UPDATE marts.user_histories SET "
                       "item_id_history = list_transform(item_id_history, lambda i: i + 1000), "
                       "session_item_ids = list_transform(session_item_ids, "
                       "    lambda s: list_transform(s, lambda i: i + 1000)), "
                       f"history_spec = {history_spec} WHERE ds = ?", [ds])


def test_user_histories_extend_the_previous_partition(built: Built, tmp_path: Path) -> None:
    # D3 reads D2's rows, not every event: a user without events on D3 keeps D2's row (users 2, 3, 5), user 1
    # continues it with D3's event. Marked item ids in D2 show that D3 took them from there.
    cfg = warehouse_copy(built, tmp_path)
    assert mark_user_histories(cfg, D2, "history_spec") == 4
    build(cfg, D3, select="user_histories")
    sql = "SELECT user_id, item_id_history, session_item_ids FROM marts.user_histories WHERE ds = ?"
    before = {u: (items, sessions) for u, items, sessions in query(cfg, sql, [D2])}
    after = {u: (items, sessions) for u, items, sessions in query(cfg, sql, [D3])}
    # user 1 up to D2: ... 102 | 101 103 (sessions 2 | 3); on D3 104 starts session 4
    assert after == {**{u: before[u] for u in (2, 3, 5)}, 1: ([1101, 1103, 104], [[1101, 1103], [104]])}


def test_user_histories_ignore_a_partition_cut_differently(built: Built, tmp_path: Path) -> None:
    # a D2 built under other vars (history_max_len, dsin_*) is not carried forward: D3 reads every event
    # again and is what the module built, marks or not
    cfg = warehouse_copy(built, tmp_path)
    assert mark_user_histories(cfg, D2, "'history_max_len=99,dsin_max_sessions=2,dsin_session_len=2'") == 4
    build(cfg, D3, select="user_histories")
    d3 = f"(SELECT * FROM marts.user_histories WHERE ds = '{D3}')"
    assert digest(cfg, [d3]) == digest(built.cfg, [d3])


def test_failing_dbt_test_raises_naming_it(built: Built, tmp_path: Path) -> None:
    # a copy of the built warehouse with a behaviour outside ingest.behaviors, so the module's stays clean
    cfg = warehouse_copy(built, tmp_path)
    tamper(cfg, "INSERT INTO raw.behaviors VALUES (?, 1, 100, 'teleport', ?, NULL, NULL, 'x.csv', 1)",
           [D3, f"{D3} 21:00:00"])
    with pytest.raises(TransformError, match="accepted_values_raw_behaviors_behavior") as err:
        build(cfg, D3, select="source:raw")
    assert err.value.failed and all(n.startswith("test.recsys.") for n in err.value.failed)
    assert "1 failing row" in str(err.value)


def test_a_null_fails_the_model_test_naming_the_column_and_count(built: Built, tmp_path: Path) -> None:
    # not_null_columns checks several columns in one test: the error must still say which one is null
    cfg = warehouse_copy(built, tmp_path)
    changed = tamper(cfg, "UPDATE marts.training_sequences SET event_ids = NULL "
                          "WHERE ds = ? AND user_id = (SELECT min(user_id) FROM marts.training_sequences WHERE ds = ?)",
                     [D2, D2])
    assert changed == 1
    with pytest.raises(TransformError, match="not_null_columns_training_sequences") as err:
        build(cfg, D2, select="test_name:not_null_columns")
    assert "1 failing row(s)" in str(err.value)
    assert "column_name='event_ids', null_rows=1" in str(err.value)  # the row of the test's query


def test_a_new_ds_reuses_the_parse_of_the_previous_one(built: Built) -> None:
    # ds is not a parse-time var, so partial parsing survives a new date: only the first build parses files
    assert built.parsed_paths[D1] > 50
    assert built.parsed_paths[D2] == built.parsed_paths[D3] == 0
    parse = dbt_args(built.cfg, None, command="parse")
    assert parse[0] == "parse" and '"ds"' not in parse[parse.index("--vars") + 1]


def test_ds_and_vars_are_validated_before_sql_runs(built: Built) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        build(built.cfg, "2024-1-3")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        build(built.cfg, "2024-01-03'; DROP TABLE raw.behaviors; --")
    with pytest.raises(ValueError, match=r"features\.history_max_len \(-1\) must be at least 1"):
        built.cfg.with_overrides({"features.history_max_len": -1})  # the config refuses it at load
    # a var that reaches dbt without the config (dbt run by hand, extra vars) is refused before any SQL runs
    with pytest.raises(TransformError, match="history_max_len must be a non-negative integer"):
        build(built.cfg, D3, extra_vars={"history_max_len": -1})
    args = dbt_args(built.cfg, D3, select="marts")
    assert args[0] == "build" and args[-2:] == ["--select", "marts"]
    assert '"ds": "2024-01-03"' in args[args.index("--vars") + 1]


def expected_sessions(timeline: list[tuple], end: int) -> tuple[list[list[int]], list[list[str | None]]]:
    """DSIN sessions of timeline[:end] ((session_number, item, category) in order): the last SESSIONS
    sessions, oldest first, each its last SESSION_LEN behaviours."""
    prior = timeline[:end]
    numbers = sorted({s for s, _, _ in prior})[-SESSIONS:]
    items = [[i for s, i, _ in prior if s == n][-SESSION_LEN:] for n in numbers]
    categories = [[c for s, _, c in prior if s == n][-SESSION_LEN:] for n in numbers]
    return items, categories


def test_training_sessions_strictly_before_the_event(built: Built) -> None:
    by_user = defaultdict(list)
    for u, i, _, at, _, s, c, _ in events(built.cfg):
        by_user[u].append((at, s, i, c))
    rows = query(built.cfg, "SELECT user_id, item_id, event_at, session_item_ids, session_category_ids "
                            f"FROM {EXAMPLES_WITH_HISTORY}")
    assert rows
    for user, item, at, session_items, session_categories in rows:
        timeline = [(s, i, c) for t, s, i, c in by_user[user]]
        before = sum(1 for t, *_ in by_user[user] if t < at)  # strictly earlier events
        assert (session_items, session_categories) == expected_sessions(timeline, before), (user, item, at)
    sessions = {(u, i, str(at.time())): s for u, i, at, s, _ in rows}
    assert sessions[(1, 101, "09:00:00")] == [[100, 101], [101, 102]]  # sessions 1 and 2, the 11:01 tie kept
    assert sessions[(1, 102, "11:01:00")] == [[100, 101]]  # the cart at the same instant is not before it
    assert sessions[(2, 107, "23:50:00")] == []  # the user's first event: no sessions


def test_user_histories_sessions_as_of_end_of_ds(built: Built) -> None:
    by_user = defaultdict(list)
    for u, i, _, _, _, s, c, ds in events(built.cfg):
        by_user[u].append((str(ds), s, i, c))
    rows = query(built.cfg, "SELECT ds, user_id, session_item_ids, session_category_ids FROM marts.user_histories")
    assert rows
    for ds, user, session_items, session_categories in rows:
        timeline = [(s, i, c) for d, s, i, c in by_user[user] if d <= str(ds)]
        assert (session_items, session_categories) == expected_sessions(timeline, len(timeline)), (ds, user)


def test_dien_negatives_align_with_history_and_were_never_touched(built: Built) -> None:
    rows = query(built.cfg, """
        SELECT t.ds, t.user_id, t.history_length, t.neg_item_id_history, t.neg_category_history,
               (SELECT list(DISTINCT e.item_id) FROM intermediate.int_events_sessionized e
                WHERE e.user_id = t.user_id AND e.ds <= t.ds) AS touched,
               (SELECT map_from_entries(list((f.item_id, f.category))) FROM marts.item_features f
                WHERE f.ds = t.ds) AS categories
        FROM marts.training_histories t""")
    assert any(r[2] > 0 for r in rows)
    for ds, user, length, negatives, neg_categories, touched, categories in rows:
        assert len(negatives) == len(neg_categories) == length, (ds, user)
        assert all(n is not None and n not in touched for n in negatives), (ds, user, negatives)
        assert neg_categories == [categories[n] for n in negatives]  # the item's category as of ds


def test_negative_samplers_split_and_popular_items_are_active(built: Built) -> None:
    rows = query(built.cfg, """
        SELECT t.ds, t.event_at, t.user_id, t.negative_sampler, f.events_30d
        FROM marts.training_examples t
        LEFT JOIN marts.item_features f ON f.ds = t.ds AND f.item_id = t.item_id
        WHERE t.label = 0""")
    per_positive = defaultdict(list)
    for ds, at, user, sampler, events_30d in rows:
        per_positive[(ds, at, user)].append(sampler)
        if sampler == "popularity":
            assert events_30d > 0  # weight events_30d ** 0.75: items without events are never drawn
    # one of each per positive (two positives of user 1 share an instant, hence the key's multiples)
    assert per_positive and all(s.count("uniform") == s.count("popularity") == len(s) / 2 > 0
                                for s in per_positive.values())
    labels = query(built.cfg, "SELECT DISTINCT label, negative_sampler IS NULL FROM marts.training_examples")
    assert sorted(labels) == [(0, False), (1, True)]


def test_user_and_item_features_windows(built: Built) -> None:
    users = query(built.cfg, "SELECT user_id, views_1d, views_7d, carts_30d, buys_7d, top_category_30d, "
                             "top_category_share_30d FROM marts.user_features WHERE ds = ? ORDER BY user_id", [D2])
    assert users[0] == (1, 1, 4, 1, 1, "a", 1.0)  # user 1: views 100, 101, 102 (D1), 103 (D2), a cart, a buy
    assert users[1] == (2, 3, 4, 0, 0, "b", 0.75)  # 107 (b), 108 (b), 100 ('z' as of D2), 110 (b)
    items = query(built.cfg, "SELECT item_id, price_bucket, events_1d, events_30d, buys_30d, conversion_30d "
                             "FROM marts.item_features WHERE ds = ? AND item_id IN (101, 105, 119) ORDER BY item_id",
                  [D2])
    # 101: view + cart on D1, buy on D2; 105: view + buy on D1; 119: catalogue only; price 9.5 -> bucket 3
    assert items == [(101, 3, 1, 3, 1, 1.0), (105, 3, 0, 2, 1, 1.0), (119, 3, 0, 0, 0, None)]


@pytest.mark.parametrize("change", [
    # every earlier session runs on to the window's last event (past the positives of ds)
    "session_ends = list_transform(session_ends, lambda e: len(item_ids))",
    # DIEN negatives the user did touch: the window's own items
    "neg_item_ids = item_ids, neg_categories = categories",
    # each positive's history one event longer: the event itself (or one at its instant) becomes history
    "events_before = list_transform(events_before, lambda b: b + 1)",
    # each history one event short at its end (stale by one event)
    "events_before = list_transform(events_before, lambda b: greatest(b - 1, 0))",
    # sessions shifted by one rank: a positive takes the wrong sessions
    "session_ranks = list_transform(session_ranks, lambda r: r + 1)",
    # a category that is not the event's
    "categories = list_transform(categories, lambda c: c || 'x')",
], ids=["session-after-the-event", "touched-dien-negative", "event-in-its-own-history", "history-one-short",
        "sessions-shifted", "wrong-category"])
def test_leakage_test_catches_sessions_and_negatives(built: Built, tmp_path: Path, change: str) -> None:
    """Tampering with the stored sequences (training_histories is their view) fails the leakage test."""
    cfg = warehouse_copy(built, tmp_path)
    assert tamper(cfg, f"UPDATE marts.training_sequences SET {change} WHERE ds = ?", [D3]) > 0
    with pytest.raises(TransformError, match="assert_no_history_leakage"):
        build(cfg, D3, select=LEAKAGE_CHECK)


@pytest.mark.parametrize("change", [
    # a user's event of ds swaps numbers with its first event (an earlier day's): out of time order
    """UPDATE intermediate.int_events_sessionized AS e SET event_number = s.swapped
       FROM (SELECT first.event_id, day.event_number AS swapped, day.event_id AS day_id
             FROM intermediate.int_events_sessionized AS first
             JOIN intermediate.int_events_sessionized AS day USING (user_id)
             WHERE first.event_number = 1 AND day.ds = $1 AND day.event_number > 1
             QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY day.event_number) = 1) AS pairs,
            LATERAL (SELECT pairs.event_id, pairs.swapped UNION ALL SELECT pairs.day_id, 1) AS s(event_id, swapped)
       WHERE e.event_id = s.event_id""",
    # numbers of ds that skip one after the user's earlier events
    "UPDATE intermediate.int_events_sessionized SET event_number = event_number + 1 WHERE ds = ?",
], ids=["swapped", "gap"])
def test_numbering_test_catches_events_out_of_time_order(built: Built, tmp_path: Path, change: str) -> None:
    """The leakage test looks events up by event_number; assert_events_numbered_in_time_order guards that."""
    cfg = warehouse_copy(built, tmp_path)
    build(cfg, D3, select="assert_events_numbered_in_time_order")  # the pipeline's numbering passes
    assert tamper(cfg, change, [D3]) > 0
    with pytest.raises(TransformError, match="assert_events_numbered_in_time_order"):
        build(cfg, D3, select="assert_events_numbered_in_time_order")


@pytest.mark.parametrize("change", [
    "UPDATE marts.training_example_lists SET event_id = event_id || 'x' WHERE ds = ? AND hash(event_id) % 3 = 0",
    "DELETE FROM marts.training_example_lists WHERE ds = ? AND hash(event_id) % 3 = 0",
], ids=["examples-without-their-history", "history-without-its-positive"])
def test_leakage_test_catches_examples_unlinked_from_histories(built: Built, tmp_path: Path, change: str) -> None:
    cfg = warehouse_copy(built, tmp_path)
    tamper(cfg, change, [D3])
    with pytest.raises(TransformError, match="assert_no_history_leakage"):
        build(cfg, D3, select=LEAKAGE_CHECK)
