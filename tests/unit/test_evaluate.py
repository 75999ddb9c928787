"""Ranking metrics against values worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from recsys.config import Config, load_config
from recsys.evaluate import evaluate
from recsys.warehouse import connect

PREV, DS = "2024-01-01", "2024-01-02"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides={"evaluate.ks": [1, 5]})
    con = connect(cfg, read_only=False)
    recs = [(1, 1, 10), (1, 2, 11), (1, 3, 12), (2, 1, 20), (3, 1, 30), (3, 2, 31)]
    for user, rank, item in recs:
        con.execute("INSERT INTO marts.recommendations VALUES (?, ?, ?, ?, 1.0 / ?, 'din', '3', 'x', NULL)",
                    [PREV, user, rank, item, rank])
    events = [  # (ds, user, item): history on PREV, truth on DS
        (PREV, 1, 50), (PREV, 2, 51), (PREV, 3, 10), (PREV, 3, 50), (PREV, 4, 50), (PREV, 4, 51),
        (DS, 1, 11), (DS, 1, 99), (DS, 3, 30), (DS, 3, 51),
    ]
    for ds, user, item in events:
        con.execute("INSERT INTO raw.behaviors VALUES (?, ?, ?, 'view', ?::TIMESTAMP, NULL, NULL, 'f', 1)",
                    [ds, user, item, ds])
    con.close()
    return cfg


def by_model_k(result) -> dict:
    return {(m["model"], m["k"]): m for m in result.metrics}


def test_metrics_match_hand_computation(cfg: Config) -> None:
    m = by_model_k(evaluate(cfg, DS))
    din5 = m[("din@v3", 5)]
    # user 1: relevant {11, 99}, hit at rank 2; user 3: relevant {30, 51}, hit at rank 1; user 2: none
    ndcg_u1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg_u3 = 1 / (1 + 1 / math.log2(3))
    assert din5["users_evaluated"] == 2 and din5["users_without_positives"] == 1
    assert din5["precision"] == pytest.approx((1 / 5 + 1 / 5) / 2)
    assert din5["recall"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert din5["ndcg"] == pytest.approx((ndcg_u1 + ndcg_u3) / 2)
    assert din5["hit_rate"] == pytest.approx(1.0)
    assert din5["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    din1 = m[("din@v3", 1)]
    assert din1["precision"] == pytest.approx(0.5) and din1["ndcg"] == pytest.approx(0.5)
    # catalogue as of PREV: items 10, 50, 51 -> top-1 coverage = {10, 20, 30} / 3
    assert din1["coverage"] == pytest.approx(1.0)


def test_popularity_baseline_excludes_touched_items(cfg: Config) -> None:
    m = by_model_k(evaluate(cfg, DS))
    pop5 = m[("popularity", 5)]
    # popular items up to PREV: 50 (3 events), 51 (2), 10 (1); user 3 touched 10 and 50 -> gets 51 (a hit)
    # user 1 gets 50, 51, 10 (no hit)
    assert pop5["users_evaluated"] == 2
    assert pop5["hit_rate"] == pytest.approx(0.5)
    assert pop5["mrr"] == pytest.approx(0.5 * 1.0)


def test_rerun_replaces_rows_and_first_day_has_nothing(cfg: Config) -> None:
    first = evaluate(cfg, DS)
    second = evaluate(cfg, DS)
    assert first.metrics == second.metrics and second.rows == 4
    empty = evaluate(cfg, PREV)
    assert empty.rows == 0 and "no recommendations" in (empty.reason or "")
