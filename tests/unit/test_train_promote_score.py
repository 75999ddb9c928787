"""Train -> MLflow registry -> promotion gate -> scoring, on a tiny generated warehouse.

The fixture warehouse has real sequential structure: every user keeps clicking items of one favourite
category, negatives come from other categories, so a model that attends to the history can learn it.
The whole pipeline runs once per module (a few seconds) and the tests inspect what it left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pyarrow as pa
import pytest
import torch

from feature_store.retrieval import feature_map_dict
from feature_store.spec import load_spec
from feature_store.vocab import update_vocab
from recsys import registry
from recsys.config import Config, load_config
from recsys.models import build_model
from recsys.promote import PromotionResult, promote
from recsys.score import NoChampionError, ScoreResult, distinct_items, rank_top_k, ranked_positions, score
from recsys.train import TrainResult, fit_epoch, load_split, model_inputs, train
from recsys.warehouse import connect, table_exists

DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")
N_USERS, N_ITEMS, N_CATEGORIES, N_CANDIDATES, TOP_K = 80, 60, 6, 10, 5
OVERRIDES = {"train.epochs": 3, "train.batch_size": 32, "train.lr": 0.01, "train.embed_dim": 8,
             "train.attention_hidden": [16, 8], "train.mlp_hidden": [32, 16], "train.train_days": 3,
             "train.device": "cpu", "score.top_k": TOP_K}


def category_of(items: np.ndarray) -> np.ndarray:
    return np.array([f"c{i % N_CATEGORIES}" for i in items], dtype=object)


def _items_of(rng: np.random.Generator, category: int, n: int, other: bool = False) -> np.ndarray:
    """n item ids (1..N_ITEMS) of the category, or of any other category when `other`."""
    ids = np.arange(1, N_ITEMS + 1)
    pool = ids[(ids % N_CATEGORIES != category) if other else (ids % N_CATEGORIES == category)]
    return rng.choice(pool, size=n)


def sessions_of(history: list[int], size: int = 3, max_sessions: int = 5, max_len: int = 10) -> list[list[int]]:
    """The history cut into sessions of `size` behaviours (oldest first): the DSIN columns of the contract."""
    chunks = [history[i:i + size] for i in range(0, len(history), size)]
    return [c[-max_len:] for c in chunks[-max_sessions:]]


def _example(day: str, example_id: str, user: int, item: int, label: int, when: datetime,
             history: list[int], negatives: list[int]) -> dict:
    sessions = sessions_of(history)
    return {"ds": date.fromisoformat(day), "example_id": example_id, "user_id": user, "item_id": item,
            "category": f"c{item % N_CATEGORIES}", "label": label, "event_at": when, "age": int(20 + user % 5),
            "gender": "FM"[user % 2], "occupation": f"o{user % 4}", "city": "x", "hour": when.hour,
            "weekday": when.weekday(), "device": "web", "item_id_history": history,
            "category_history": list(category_of(np.array(history))), "behavior_history": ["view"] * len(history),
            "session_number_history": [1] * len(history), "history_length": len(history),
            # DIEN / DSIN columns of the contract (extra columns are harmless to older specs)
            "neg_item_id_history": negatives, "neg_category_history": list(category_of(np.array(negatives))),
            "session_item_ids": sessions,
            "session_category_ids": [list(category_of(np.array(sess))) for sess in sessions]}


def build_marts(con: duckdb.DuckDBPyConnection, seed: int = 0) -> None:
    """marts.training_examples / training_histories for DAYS plus user_histories / user_features /
    scoring_candidates of the last day."""
    rng = np.random.default_rng(seed)
    favourite = rng.integers(0, N_CATEGORIES, N_USERS)
    histories = {u: list(_items_of(rng, favourite[u], 3)) for u in range(N_USERS)}  # behaviour before DAYS[0]
    examples = []
    for day in DAYS:
        for u in range(N_USERS):
            history, when = list(histories[u][-50:]), datetime.fromisoformat(day) + timedelta(hours=int(u % 24))
            positive = int(_items_of(rng, favourite[u], 1)[0])
            candidates = [(positive, 1)] + [(int(i), 0) for i in _items_of(rng, favourite[u], 2, other=True)]
            negatives = [int(i) for i in _items_of(rng, favourite[u], len(history), other=True)]
            examples += [dict(_example(day, f"{day}-{u}-{j}", u, item, label, when, history, negatives),
                              event_id=f"{day}-{u}-0") for j, (item, label) in enumerate(candidates)]
            histories[u].append(positive)
    _create_training(con, examples)
    _create_scoring_marts(con, rng, favourite, histories)


def _create_scoring_marts(con: duckdb.DuckDBPyConnection, rng: np.random.Generator, favourite: np.ndarray,
                          histories: dict[int, list]) -> None:
    day = date.fromisoformat(DAYS[-1])
    users = np.arange(N_USERS)
    hist = [[int(i) for i in histories[u][-50:]] for u in users]
    _create(con, "user_histories", pa.table({
        "ds": [day] * N_USERS, "user_id": users, "item_id_history": hist,
        "category_history": [list(category_of(np.array(h))) for h in hist],
        "behavior_history": [["view"] * len(h) for h in hist],
        "event_at_history": [[datetime(2024, 1, 3)] * len(h) for h in hist],
        "session_number_history": [[1] * len(h) for h in hist], "history_length": [len(h) for h in hist],
        "session_item_ids": [sessions_of(h) for h in hist],
        "session_category_ids": [[list(category_of(np.array(s))) for s in sessions_of(h)] for h in hist]}))
    _create(con, "user_features", pa.table({
        "ds": [day] * N_USERS, "user_id": users, "age": 20 + users % 5, "gender": ["FM"[u % 2] for u in users],
        "occupation": [f"o{u % 4}" for u in users], "city": ["x"] * N_USERS, "events_1d": np.ones(N_USERS),
        "events_7d": np.ones(N_USERS), "events_30d": np.ones(N_USERS), "days_since_last_event": np.zeros(N_USERS)}))
    items = np.concatenate([np.concatenate([_items_of(rng, favourite[u], N_CANDIDATES // 2),
                                            _items_of(rng, favourite[u], N_CANDIDATES // 2, other=True)])
                            for u in users])
    user_of = np.repeat(users, N_CANDIDATES)
    pairs = np.unique(np.stack([user_of, items], axis=1), axis=0)  # a candidate appears once per user
    _create(con, "scoring_candidates", pa.table({
        "ds": [day] * len(pairs), "user_id": pairs[:, 0], "item_id": pairs[:, 1],
        "category": category_of(pairs[:, 1]), "candidate_source": ["fixture"] * len(pairs)}))


HISTORY_COLUMNS = ("item_id_history", "category_history", "behavior_history", "session_number_history",
                   "history_length", "neg_item_id_history", "neg_category_history", "session_item_ids",
                   "session_category_ids")


def _create_training(con: duckdb.DuckDBPyConnection, examples: list[dict]) -> None:
    """marts.training_examples (the examples' scalar columns) and marts.training_histories (the lists, once
    per event_id), as the dbt marts store them."""
    _create(con, "training_examples", pa.Table.from_pylist(
        [{k: v for k, v in e.items() if k not in HISTORY_COLUMNS} for e in examples]))
    events: dict[str, dict] = {}
    for e in examples:
        events.setdefault(e["event_id"], {"ds": e["ds"], "event_id": e["event_id"], "user_id": e["user_id"],
                                          "event_at": e["event_at"], **{k: e[k] for k in HISTORY_COLUMNS}})
    _create(con, "training_histories", pa.Table.from_pylist(list(events.values())))


def _create(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    con.register("fixture_rows", table)
    con.execute(f"CREATE OR REPLACE TABLE marts.{name} AS SELECT * FROM fixture_rows")
    con.unregister("fixture_rows")


def shuffle_training_labels(cfg: Config, seed: int = 1, before: str = DAYS[-1]) -> int:
    """Break the labels of every day before `before` (default: all but the last day): a model trained on
    them learns nothing real. Returns how many labels changed.

    A dbt-built warehouse stores a positive and its negatives as one row of training_example_lists
    (training_examples is its view), so there each positive's labelled item becomes a uniform pick among
    its own item and its negatives; a hand-made training_examples table gets its labels permuted."""
    con = connect(cfg, read_only=False)
    try:
        if table_exists(con, "marts.training_example_lists"):
            return _swap_positive_items(con, seed, before)
        table = con.sql("SELECT * FROM marts.training_examples ORDER BY example_id").to_arrow_table()
        labels = table.column("label").to_numpy().copy()
        train_rows = np.flatnonzero(table.column("ds").to_numpy() < np.datetime64(before))
        original = labels[train_rows].copy()
        labels[train_rows] = np.random.default_rng(seed).permutation(original)
        _create(con, "training_examples",
                table.set_column(table.column_names.index("label"), "label", pa.array(labels, pa.int32())))
        return int((labels[train_rows] != original).sum())
    finally:
        con.close()


def _swap_positive_items(con: duckdb.DuckDBPyConnection, seed: int, before: str) -> int:
    """Per stored positive before `before`, pick j uniformly in 0..k (k negatives) and swap the positive's
    item and category with negative j's (j = 0 keeps them): every item of a positive's group is then the
    labelled one with the same chance. Returns the labels changed (2 per swap)."""
    pick = f"CAST(hash(event_id, {int(seed)}) % (len(negative_items) + 1) AS BIGINT)"
    positions = "generate_series(1, len(negative_items))"
    swapped = con.execute(f"""
        UPDATE marts.training_example_lists SET
            item_id = negative_items[{pick}],
            category = negative_categories[{pick}],
            negative_items = list_transform({positions},
                lambda i: CASE WHEN i = {pick} THEN item_id ELSE negative_items[i] END),
            negative_categories = list_transform({positions},
                lambda i: CASE WHEN i = {pick} THEN category ELSE negative_categories[i] END)
        WHERE ds < ? AND {pick} > 0""", [before]).fetchone()[0]
    return 2 * int(swapped)


@dataclass
class Pipeline:
    cfg: Config
    first: TrainResult
    first_promotion: PromotionResult
    second: TrainResult
    second_promotion: PromotionResult
    scored: ScoreResult
    table: list[tuple]
    rerun_table: list[tuple]


def recommendations(cfg: Config) -> list[tuple]:
    con = connect(cfg, read_only=True)
    try:
        return con.execute("SELECT * FROM marts.recommendations ORDER BY ds, user_id, rank").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_HOME", str(tmp_path_factory.mktemp("home")))
        cfg = load_config(overrides=OVERRIDES)
        con = connect(cfg, read_only=False)
        build_marts(con)
        con.close()
        ds = DAYS[-1]
        first = train(cfg, ds)
        first_promotion = promote(cfg, ds)
        shuffle_training_labels(cfg)
        second = train(cfg, ds)
        second_promotion = promote(cfg, ds)
        scored = score(cfg, ds)
        table = recommendations(cfg)
        score(cfg, ds)
        yield Pipeline(cfg, first, first_promotion, second, second_promotion, scored, table, recommendations(cfg))


def test_train_logs_a_run_and_registers_version_one(pipeline: Pipeline) -> None:
    cfg, result = pipeline.cfg, pipeline.first
    assert result.model_version == "1" and result.model_name == "din"
    client = registry.configure(cfg)
    run = client.get_run(result.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "recsys/din"
    assert experiment.artifact_location.startswith(Path(cfg.paths.mlflow_artifacts).resolve().as_uri())
    params = run.data.params
    assert params["train.epochs"] == "3" and params["model_name"] == "din" and params["split"] == "days"
    assert params["gauc_weighting"] == "impressions" and params["features.history_max_len"] == "50"
    assert params["train_from"] == DAYS[0] and params["train_to"] == DAYS[1]
    assert int(params["n_train"]) == 2 * 3 * N_USERS and int(params["n_valid"]) == 3 * N_USERS
    history = client.get_metric_history(result.run_id, "val_gauc")
    assert [m.step for m in history] == [1, 2, 3]
    assert set(result.metrics) >= {"train_loss", "val_auc", "val_gauc", "val_logloss"}
    assert result.metrics["val_gauc"] > 0.8  # the favourite-category signal is learnable
    files = {f.path for f in client.list_artifacts(result.run_id, registry.ARTIFACT_DIR)}
    assert files == {f"{registry.ARTIFACT_DIR}/{n}" for n in (registry.WEIGHTS, registry.MODEL_CONFIG,
                                                             registry.FEATURE_MAP)}
    version = client.get_model_version(cfg.mlflow.registered_model, "1")
    assert version.run_id == result.run_id
    assert version.tags["ds"] == DAYS[-1] and version.tags["model_name"] == "din"
    assert version.tags["git_sha"] and version.tags["dbt_manifest_sha"] == "unknown"


def test_registered_pyfunc_predicts(pipeline: Pipeline) -> None:
    cfg = pipeline.cfg
    registry.configure(cfg)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}/1")
    con = connect(cfg, read_only=True)
    try:
        split = load_split(con, cfg, DAYS[-1], load_spec())
    finally:
        con.close()
    loaded = registry.load_version(cfg, "1")
    example = split.valid.batch(np.arange(4), loaded.feature_map.inputs)
    probs = model.predict(example)
    assert probs.shape == (4,) and ((probs >= 0) & (probs <= 1)).all()
    with torch.inference_mode():
        direct = torch.sigmoid(loaded.model({k: torch.from_numpy(v) for k, v in example.items()}).logits)
    np.testing.assert_allclose(probs, direct.numpy(), rtol=1e-5)


def test_models_load_with_weights_only(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = torch.load

    def spy(*args: object, **kwargs: object) -> object:  # records weights_only, then the real torch.load
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = registry.load_champion(pipeline.cfg)
    assert calls == [True]
    assert loaded.version == "1" and loaded.model_name == "din" and not loaded.model.training
    assert loaded.feature_map.vocab_sizes["item"] == N_ITEMS + 2


def test_first_model_becomes_champion(pipeline: Pipeline) -> None:
    first = pipeline.first_promotion
    assert first.decision == "first_champion" and first.challenger_version == "1"
    assert first.champion_version is None and first.metric_name == "gauc"
    assert first.challenger_metric == pytest.approx(pipeline.first.metrics["val_gauc"])  # same frame, same model


def test_model_trained_on_shuffled_labels_is_not_promoted(pipeline: Pipeline) -> None:
    cfg, second = pipeline.cfg, pipeline.second_promotion
    assert pipeline.second.model_version == "2"
    assert second.decision == "kept" and second.champion_version == "1" and second.challenger_version == "2"
    assert second.champion_metric > second.challenger_metric + 0.1
    assert registry.champion_version(cfg) == "1"
    tags = registry.configure(cfg).get_model_version(cfg.mlflow.registered_model, "2").tags
    assert tags["promotion_decision"] == "kept" and tags["promotion_champion_version"] == "1"
    assert float(tags["promotion_champion_value"]) == pytest.approx(second.champion_metric)
    runs = mlflow.search_runs(experiment_names=["recsys/promotion"], output_format="list")
    assert {"first_champion", "kept"} <= {r.data.params["decision"] for r in runs}


def test_challenger_beyond_the_margin_is_promoted(pipeline: Pipeline) -> None:
    cfg = pipeline.cfg.with_overrides({"promote.margin": -1.0})  # any GAUC clears a margin of -1
    try:
        result = promote(cfg, DAYS[-1], version="2")
        assert result.decision == "promoted" and result.champion_version == "1"
        assert registry.champion_version(cfg) == "2"
    finally:
        registry.set_champion(cfg, "1")  # the other tests expect version 1 as champion


def test_score_writes_top_k_per_user(pipeline: Pipeline) -> None:
    rows = pipeline.table
    assert pipeline.scored.rows == len(rows) == N_USERS * TOP_K and pipeline.scored.users == N_USERS
    assert pipeline.scored.model_version == "1"
    by_user: dict[int, list[tuple]] = {}
    for row in rows:
        by_user.setdefault(row[1], []).append(row)
    for recs in by_user.values():
        assert [r[2] for r in recs] == list(range(1, TOP_K + 1))
        keys = [(-r[4], r[3]) for r in recs]
        assert keys == sorted(keys)  # score desc, then item_id asc
        assert len({r[3] for r in recs}) == TOP_K
    assert {(r[5], r[6], r[7]) for r in rows} == {("din", "1", "fixture")}
    # the champion learned the favourite category: most top-5 items share the history's category
    con = connect(pipeline.cfg, read_only=True)
    try:
        share = con.execute("""
            SELECT avg((r.item_id % 6 = h.item_id_history[-1] % 6)::INTEGER) FROM marts.recommendations r
            JOIN marts.user_histories h USING (ds, user_id)""").fetchall()[0][0]
    finally:
        con.close()
    assert share > 0.8


def test_explanations_name_history_items(pipeline: Pipeline) -> None:
    con = connect(pipeline.cfg, read_only=True)
    try:
        rows = con.execute("""
            SELECT r.explanation, h.item_id_history FROM marts.recommendations r
            JOIN marts.user_histories h USING (ds, user_id)""").fetchall()
    finally:
        con.close()
    for explanation, history in rows:
        assert explanation.startswith("because you viewed items ")
        named = [int(x) for x in explanation.removeprefix("because you viewed items ").split(", ")]
        assert 1 <= len(named) <= 3 and set(named) <= set(history)


def test_rescoring_the_same_day_leaves_the_same_rows(pipeline: Pipeline) -> None:
    assert pipeline.rerun_table == pipeline.table


def test_score_without_champion_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides=OVERRIDES)
    with pytest.raises(NoChampionError, match="recsys promote"):
        score(cfg, DAYS[-1])


def test_training_is_deterministic_on_cpu(pipeline: Pipeline) -> None:
    cfg = pipeline.cfg
    con = connect(cfg, read_only=True)
    try:
        split = load_split(con, cfg, DAYS[-1], load_spec())
        fmap = feature_map_dict(con, load_spec())
    finally:
        con.close()

    def one_epoch() -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(cfg.train.seed)
        model = build_model("din", fmap, embed_dim=8, attention_hidden=(16, 8), mlp_hidden=(32, 16))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        generator = torch.Generator().manual_seed(cfg.train.seed)
        tc = cfg.with_overrides({"train.batch_size": 32}).train
        loss = fit_epoch(model, split.train, optimizer, model_inputs(fmap), tc, generator, torch.device("cpu"), 1)
        return loss, model.state_dict()

    (loss_a, state_a), (loss_b, state_b) = one_epoch(), one_epoch()
    assert loss_a == loss_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_first_day_splits_users_80_20(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides=OVERRIDES)
    spec = load_spec()
    con = connect(cfg, read_only=False)
    try:
        build_marts(con)
        update_vocab(con, DAYS[0], DAYS[0], spec)
        split = load_split(con, cfg, DAYS[0], spec)
    finally:
        con.close()
    assert split.kind == "user_hash_80_20" and split.train_from == split.train_to == DAYS[0]
    train_users, valid_users = set(split.train.keys["user_id"]), set(split.valid.keys["user_id"])
    assert not train_users & valid_users and len(train_users | valid_users) == N_USERS
    assert 0.1 < len(valid_users) / N_USERS < 0.3


def test_rank_top_k_breaks_score_ties_by_item_id() -> None:
    users = np.array([2, 1, 1, 1, 2, 1])
    items = np.array([9, 30, 10, 20, 8, 5])
    scores = np.array([0.5, 0.9, 0.7, 0.7, 0.5, 0.1], dtype=np.float32)
    rows, ranks = rank_top_k(users, items, scores, k=3)
    assert items[rows].tolist() == [30, 10, 20, 8, 9] and ranks.tolist() == [1, 2, 3, 1, 2]


def test_explanations_pick_distinct_items_by_attention_or_recency() -> None:
    history = np.array([[7, 8, 7, 9, 0], [5, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    lengths = np.array([4, 1, 0])
    attention = np.array([[0.9, 0.1, 0.8, 0.5, 0.0], [0.2, 0.0, 0.0, 0.0, 0.0], [0.0] * 5])
    by_attention = ranked_positions(attention, lengths)
    assert by_attention[0, :4].tolist() == [0, 2, 3, 1] and (by_attention[1:, 1:] == -1).all()
    ids, present = distinct_items(history, by_attention)
    assert ids[0].tolist() == [7, 9, 8] and present[0].all()  # the second 7 is skipped
    assert present[1].tolist() == [True, False, False] and ids[1, 0] == 5 and not present[2].any()
    recent, present = distinct_items(history, ranked_positions(None, lengths))
    assert recent[0].tolist() == [9, 7, 8] and present[0].all()  # most recent first, 7 once


def test_features_unknown_at_scoring_are_trained_as_scoring_feeds_them() -> None:
    """hour / weekday have no scoring source: training sees their default, as the scorer does."""
    from feature_store.retrieval import Frame, as_served
    from feature_store.spec import load_spec

    spec = load_spec()
    frame = Frame(columns={"hour": np.array([3, 7, 9]), "weekday": np.array([2, 4, 6]),
                           "age": np.array([5, 6, 7])},
                  keys={"user_id": np.array([1, 2, 3])})
    as_served(frame, spec)
    assert frame["hour"].tolist() == [1, 1, 1] and frame["weekday"].tolist() == [1, 1, 1]
    assert frame["age"].tolist() == [5, 6, 7]  # known at scoring: untouched
