"""marts.scoring_candidate_lists / marts.scoring_candidates on hand-made raw rows.

Items 100-109 are category 'a', 110-119 'b'. On D1 users 10, 11, 12 view 100 with 101 and/or 102 in one
session each (so 101 and 102 are each co-visited with 100 twice), user 13 views 110, 111, 112 and 111
again, user 14 views only 100, user 15 has a profile and no behaviour (cold start). Window popularity on
D1: 100 (4 events), 101, 102, 111 (2), 110, 112 (1). Candidates per user: 5.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from recsys.config import Config, load_config
from recsys.transform import build
from recsys.warehouse import connect

D1 = "2024-01-01"
PER_USER = 5
SELECT = "+scoring_candidates +training_examples +training_histories"  # the leakage test reads both
BEHAVIORS = [  # (user, item, time of day); all views on D1
    (10, 100, "10:00:00"), (10, 101, "10:05:00"),
    (11, 100, "11:00:00"), (11, 101, "11:05:00"), (11, 102, "11:10:00"),
    (12, 100, "12:00:00"), (12, 102, "12:05:00"),
    (13, 110, "13:00:00"), (13, 111, "13:05:00"), (13, 112, "13:10:00"), (13, 111, "13:15:00"),
    (14, 100, "14:00:00"),
]


def seed(cfg: Config) -> None:
    con = connect(cfg, read_only=False)
    try:
        con.executemany("INSERT INTO raw.behaviors VALUES (?, ?, ?, 'view', ?, NULL, 'web', 'behaviors.csv', ?)",
                        [[D1, u, i, f"{D1} {t}", n] for n, (u, i, t) in enumerate(BEHAVIORS)])
        con.executemany("INSERT INTO raw.items VALUES (?, ?, ?, 'brand', 9.5, 'title', 'items.csv', ?)",
                        [[D1, i, "a" if i < 110 else "b", i] for i in range(100, 120)])
        con.executemany("INSERT INTO raw.users VALUES (?, ?, 30, 'F', 'city', 'writer', 'users.csv', ?)",
                        [[D1, u, u] for u in (10, 14, 15)])
    finally:
        con.close()


def query(cfg: Config, sql: str, params: list | None = None) -> list[tuple]:
    con = connect(cfg)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@dataclass
class Built:
    cfg: Config
    pairs: dict[int, list[tuple[int, str]]]  # user -> [(item, source)] in list order


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: object) -> Iterator[Built]:
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_HOME", str(tmp_path_factory.mktemp(name)))
    cfg = load_config(overrides={"features.candidates_per_user": PER_USER, **overrides})
    seed(cfg)
    build(cfg, D1, select=SELECT)
    rows = query(cfg, "SELECT user_id, item_id, candidate_source FROM marts.scoring_candidates WHERE ds = ? "
                      "ORDER BY user_id, candidate_rank", [D1])
    pairs: dict[int, list[tuple[int, str]]] = {}
    for user, item, source in rows:
        pairs.setdefault(user, []).append((item, source))
    yield Built(cfg, pairs)
    mp.undo()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    yield from _build(tmp_path_factory, "candidates")


@pytest.fixture(scope="module")
def built_with_touched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    yield from _build(tmp_path_factory, "candidates_touched", **{"features.candidates_include_touched": True})


def test_covisited_items_come_first_then_other_categories(built: Built) -> None:
    # 100's co-visits: 101 and 102 (two sessions each, tie -> item id); category 'a' has nothing left
    # (100 touched, 101/102 already co-visited), so global popular items of the other category fill up
    assert built.pairs[14] == [(101, "covisitation"), (102, "covisitation"), (111, "global_popular"),
                               (110, "global_popular"), (112, "global_popular")]


def test_touched_items_are_never_candidates(built: Built) -> None:
    touched = {(u, i) for u, i, _ in BEHAVIORS}
    assert all((u, i) not in touched for u, items in built.pairs.items() for i, _ in items)
    # user 13 touched every 'b' item with events: only 'a' items remain, by popularity
    assert built.pairs[13] == [(100, "global_popular"), (101, "global_popular"), (102, "global_popular")]


def test_category_popular_fills_the_users_top_category(built: Built) -> None:
    # user 10 (100, 101): co-visit of 100 -> 102, of 101 -> nothing new; 'a' has no untouched item left
    assert built.pairs[10][0] == (102, "covisitation")
    assert [s for _, s in built.pairs[10][1:]] == ["global_popular"] * 3


def test_cold_start_users_get_global_popularity_marked(built: Built) -> None:
    assert built.pairs[15] == [(100, "cold_start_popular"), (101, "cold_start_popular"),
                               (102, "cold_start_popular"), (111, "cold_start_popular"),
                               (110, "cold_start_popular")]
    flags = dict(query(built.cfg, "SELECT user_id, is_cold_start FROM marts.scoring_candidate_lists"))
    assert flags[15] is True and not any(v for u, v in flags.items() if u != 15)


def test_lists_are_capped_distinct_and_counted_by_source(built: Built) -> None:
    rows = query(built.cfg, "SELECT user_id, item_ids, n_covisitation, n_category_popular, n_global_popular "
                            "FROM marts.scoring_candidate_lists WHERE ds = ?", [D1])
    assert {r[0] for r in rows} == {10, 11, 12, 13, 14, 15}  # active users and the cold-start user
    for user, items, n_cov, n_cat, n_glob in rows:
        assert 0 < len(items) == len(set(items)) <= PER_USER
        assert n_cov + n_cat + n_glob == len(items)
        sources = [s for _, s in built.pairs[user]]
        if user != 15:
            assert sources == ["covisitation"] * n_cov + ["category_popular"] * n_cat + ["global_popular"] * n_glob


def test_pair_view_carries_categories_as_of_ds(built: Built) -> None:
    rows = query(built.cfg, "SELECT item_id, category FROM marts.scoring_candidates WHERE ds = ?", [D1])
    assert rows and all(c == ("a" if i < 110 else "b") for i, c in rows)


def test_include_touched_lets_touched_items_back(built_with_touched: Built) -> None:
    # 100 is no longer skipped in category 'a'; 101/102 stay co-visitation (one row per item)
    assert built_with_touched.pairs[14] == [(101, "covisitation"), (102, "covisitation"), (100, "category_popular"),
                                            (111, "global_popular"), (110, "global_popular")]
