"""Scoring: per-user batched `score_candidates` against the per-pair path, and the bad-input cases.

Reuses the generated warehouse of test_train_promote_score (users who click one favourite category),
trains and promotes one DIN for the last day, then scores it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_store.retrieval import scoring_frame
from feature_store.spec import load_spec
from recsys import score as score_module
from recsys.config import Config, load_config
from recsys.models.features import FeatureMap
from recsys.promote import promote
from recsys.registry import LoadedModel
from recsys.score import (
    EXPLAIN_HISTORY,
    FeatureMapMismatchError,
    NoChampionError,
    candidate_matrix,
    check_feature_map,
    model_for,
    rank_top_k,
    score,
    score_frame,
    user_groups,
)
from recsys.train import predict, train
from recsys.warehouse import connect
from tests.unit.test_train_promote_score import DAYS, OVERRIDES, TOP_K, build_marts, recommendations

DS = DAYS[-1]


@dataclass
class Scored:
    cfg: Config
    rows: int
    table: list[tuple]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_HOME", str(tmp_path_factory.mktemp("score_home")))
        cfg = load_config(overrides=OVERRIDES)
        con = connect(cfg, read_only=False)
        build_marts(con)
        con.close()
        train(cfg, DS, "din")
        promote(cfg, DS)
        result = score(cfg, DS)
        yield Scored(cfg, result.rows, recommendations(cfg))


def _frame(cfg: Config):
    con = connect(cfg, read_only=True)
    try:
        return scoring_frame(con, DS, load_spec(cfg.paths.feature_specs), raw_histories=(EXPLAIN_HISTORY,))
    finally:
        con.close()


def test_user_groups_and_padded_candidate_matrix() -> None:
    order, offsets = user_groups(np.array([1, 0, 1, 2, 1]))
    assert order.tolist() == [1, 0, 2, 4, 3] and offsets.tolist() == [0, 1, 4, 5]
    rows, valid = candidate_matrix(order, offsets, np.array([0, 1]))
    assert rows.tolist() == [[1, 1, 1], [0, 2, 4]]  # user 0 padded with its own first row
    assert valid.tolist() == [[True, False, False], [True, True, True]]


def test_batched_scoring_matches_per_pair_scoring(scored: Scored) -> None:
    """Whole users per `score_candidates` call give the same top-K as scoring every pair on its own."""
    loaded = model_for(scored.cfg, DS)
    fmap = loaded.feature_map.to_dict()
    frame = _frame(scored.cfg)
    naive = predict(loaded.model, frame, fmap, torch.device("cpu"))  # forward() over expanded pairs
    rows, ranks = rank_top_k(frame.keys["user_id"], frame.keys["item_id"], naive, TOP_K)
    for pairs in (7, 10_000):  # a user per call (C > 7) and all users in one call give the same result
        batched = score_frame(loaded.model, frame, fmap, torch.device("cpu"), TOP_K, pairs_per_batch=pairs)
        np.testing.assert_allclose(batched.scores, naive[batched.rows], rtol=1e-5, atol=1e-6)
        # rankings agree up to float noise between the two paths: compare (user, rank) -> item on clear gaps
        assert batched.ranks.tolist() == ranks.tolist()
        same = batched.rows == rows
        assert same.mean() > 0.95 and np.allclose(naive[batched.rows[~same]], naive[rows[~same]], atol=1e-5)


def test_published_rows_are_ranked_with_ties_by_item_and_explained(scored: Scored) -> None:
    assert scored.rows == len(scored.table) > 0
    by_user: dict[int, list[tuple]] = {}
    for row in scored.table:
        by_user.setdefault(row[1], []).append(row)
    for rows in by_user.values():
        assert [r[2] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) <= TOP_K
        keys = [(-r[4], r[3]) for r in rows]
        assert keys == sorted(keys)  # score desc, then item_id asc
    explained = [r[8] for r in scored.table if r[8]]
    assert explained and all(e.startswith("because you viewed items ") for e in explained)


def test_rescoring_replaces_the_partition(scored: Scored) -> None:
    assert score(scored.cfg, DS).rows == scored.rows
    assert recommendations(scored.cfg) == scored.table


def test_failed_write_keeps_previous_rows(scored: Scored, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(score_module, "INSERT_SQL", score_module.INSERT_SQL.replace("FROM scored_top", "FROM nowhere"))
    with pytest.raises(Exception, match="nowhere"):
        score(scored.cfg, DS)
    assert recommendations(scored.cfg) == scored.table


def test_model_with_a_different_feature_map_is_refused(scored: Scored, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = model_for(scored.cfg, DS)
    changed = loaded.feature_map.to_dict()
    user = next(f for f in changed["features"] if f["role"] == "user" and f["kind"] == "categorical")
    old_group, user["group"] = user["group"], "renamed"
    changed["vocab_sizes"]["renamed"] = 5
    changed["features"].append({"name": "brand", "kind": "categorical", "group": "brand", "role": "target"})
    changed["vocab_sizes"]["brand"] = 5
    other = dataclasses.replace(loaded, feature_map=FeatureMap.from_dict(changed))
    monkeypatch.setattr(score_module, "model_for", lambda cfg, ds: other)
    with pytest.raises(FeatureMapMismatchError, match=rf"{user['name']}: group 'renamed' -> '{old_group}'.*brand: not"):
        score(scored.cfg, DS)
    assert recommendations(scored.cfg) == scored.table  # nothing written


def test_check_feature_map_accepts_grown_vocabularies() -> None:
    fmap = {"features": [{"name": "item_id", "kind": "categorical", "group": "item", "role": "target"}],
            "vocab_sizes": {"item": 10}, "label": "label", "length": "history_length"}
    check_feature_map(fmap, {**fmap, "vocab_sizes": {"item": 99}}, "1")


def test_unseen_users_and_items_are_scored_as_unknown(scored: Scored) -> None:
    con = connect(scored.cfg, read_only=False)
    try:
        con.execute("INSERT INTO marts.scoring_candidates VALUES (?, 90001, 777777, 'never-seen', 'fixture')", [DS])
        con.execute("INSERT INTO marts.scoring_candidates VALUES (?, 0, 888888, NULL, 'fixture')", [DS])
    finally:
        con.close()
    try:
        score(scored.cfg, DS)
        rows = {(r[1], r[3]): r for r in recommendations(scored.cfg)}
        assert (90001, 777777) in rows and rows[(90001, 777777)][2] == 1  # an unknown user, its only candidate
        assert rows[(90001, 777777)][8] is None  # no history, no explanation
        assert all(np.isfinite(r[4]) for r in rows.values())
    finally:
        con = connect(scored.cfg, read_only=False)
        con.execute("DELETE FROM marts.scoring_candidates WHERE item_id IN (777777, 888888)")
        con.close()
        score(scored.cfg, DS)


def test_empty_candidate_set_publishes_nothing(scored: Scored, caplog: pytest.LogCaptureFixture) -> None:
    con = connect(scored.cfg, read_only=False)
    try:
        con.execute("CREATE TABLE marts.candidates_backup AS SELECT * FROM marts.scoring_candidates")
        con.execute("DELETE FROM marts.scoring_candidates")
    finally:
        con.close()
    try:
        with caplog.at_level(logging.WARNING, logger="recsys.score"):
            result = score(scored.cfg, DS)
        assert result.rows == 0 and result.users == 0
        assert recommendations(scored.cfg) == []
        assert "no rows for ds" in caplog.text
    finally:
        con = connect(scored.cfg, read_only=False)
        con.execute("INSERT INTO marts.scoring_candidates SELECT * FROM marts.candidates_backup")
        con.execute("DROP TABLE marts.candidates_backup")
        con.close()
        score(scored.cfg, DS)


def test_no_champion_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides=OVERRIDES)
    with pytest.raises(NoChampionError, match="champion"):
        score(cfg, DS)


def test_loaded_model_type_is_what_scoring_expects() -> None:
    assert {f.name for f in dataclasses.fields(LoadedModel)} >= {"model", "feature_map", "version", "model_name"}


def test_evaluation_ranks_the_same_candidates_with_the_base_model(scored: Scored) -> None:
    from recsys.evaluate import evaluate

    base = train(scored.cfg, DS, "base")
    nxt = "2024-01-04"
    published = recommendations(scored.cfg)
    truth = [(r[1], r[3]) for r in published if r[2] == 1][:20]  # the champion's first item of 20 users
    con = connect(scored.cfg, read_only=False)
    try:
        con.executemany("INSERT INTO raw.behaviors VALUES (?, ?, ?, 'view', ?::TIMESTAMP, NULL, NULL, 'f', 1)",
                        [[nxt, u, i, nxt] for u, i in truth])
    finally:
        con.close()
    m = {(r["model"], r["k"]): r for r in evaluate(scored.cfg, nxt).metrics}
    champion, base_name = f"{published[0][5]}@v{published[0][6]}", f"base@v{base.model_version}"
    assert m[(champion, 5)]["hit_rate"] == pytest.approx(1.0)  # by construction
    assert m[(base_name, 5)]["users_evaluated"] == m[(champion, 5)]["users_evaluated"] == len(truth)
    assert 0.0 <= m[(base_name, 50)]["recall"] <= 1.0
