"""Ranking metrics against values worked out by hand."""

from __future__ import annotations

import dataclasses
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


@pytest.fixture
def cfg_with_candidates(cfg: Config) -> Config:
    """The candidate lists of PREV (as the marts.scoring_candidates view shows them), C = 3."""
    con = connect(cfg, read_only=False)
    con.execute("CREATE TABLE marts.scoring_candidates (ds DATE, user_id BIGINT, item_id BIGINT, category VARCHAR, "
                "candidate_source VARCHAR, candidate_rank INTEGER)")
    rows = [(1, 11, "covisitation", 1), (1, 60, "covisitation", 2), (1, 99, "category_popular", 3),
            (3, 40, "covisitation", 1), (3, 30, "global_popular", 2), (2, 20, "category_popular", 1),
            (7, 11, "covisitation", 1)]  # user 7 got no published recommendation: not evaluated
    con.executemany("INSERT INTO marts.scoring_candidates VALUES (?, ?, ?, 'c', ?, ?)",
                    [[PREV, u, i, s, r] for u, i, s, r in rows])
    con.close()
    return dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, candidates_per_user=3))


def test_covisitation_baseline_and_candidate_recall(cfg_with_candidates: Config) -> None:
    result = evaluate(cfg_with_candidates, DS)
    m = by_model_k(result)
    assert result.rows == 7  # din, popularity, covisitation at K = 1, 5, plus candidates at K = C
    cov5 = m[("covisitation", 5)]
    # user 1: [11, 60] -> hit at rank 1; user 3: [40] -> none; user 2 (no positives) counted apart
    assert cov5["users_evaluated"] == 2 and cov5["users_without_positives"] == 1
    assert cov5["precision"] == pytest.approx((1 / 5 + 0) / 2)
    assert cov5["recall"] == pytest.approx((1 / 2 + 0) / 2)
    assert cov5["hit_rate"] == pytest.approx(0.5) and cov5["mrr"] == pytest.approx(0.5)
    # candidate recall@3: user 1 has both relevant items among its candidates, user 3 one of two
    assert ("candidates", 5) not in m
    assert m[("candidates", 3)]["recall"] == pytest.approx((1 + 1 / 2) / 2)
    assert m[("candidates", 3)]["users_evaluated"] == 2


def test_metrics_go_to_mlflow_and_a_report(cfg_with_candidates: Config) -> None:
    import mlflow

    from recsys import registry

    first = evaluate(cfg_with_candidates, DS)
    evaluate(cfg_with_candidates, DS)  # a rerun logs into the same run
    client = registry.configure(cfg_with_candidates)
    experiment = client.get_experiment_by_name("recsys/evaluation")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["ds"] == DS
    logged = runs[0].data.metrics
    assert logged["din_v3.ndcg_at_5"] == pytest.approx(by_model_k(first)[("din@v3", 5)]["ndcg"])
    assert logged["candidates.recall_at_3"] == pytest.approx(0.75)
    assert mlflow.get_tracking_uri().startswith("sqlite")
    report = Path(first.report)
    assert report == cfg_with_candidates.paths.home / "reports" / "ranking_metrics.png"
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
