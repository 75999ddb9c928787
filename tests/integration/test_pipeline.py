"""End to end on tiny synthetic data: two consecutive dates through every stage, then a rerun.

This is the one slow test of the suite (dbt, GX, torch and MLflow all start for real).
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import duckdb
import pytest

from recsys.config import Config, load_config
from recsys.data.synth import synthesize
from recsys.pipeline import run_day, run_range

pytestmark = pytest.mark.integration

DAY1, DAY2 = "2024-01-01", "2024-01-02"
TABLES = ["raw.behaviors", "raw.rejected_rows", "intermediate.int_events_sessionized",
          "intermediate.int_item_popularity", "intermediate.int_item_covisitation", "marts.user_histories",
          "marts.training_sequences", "marts.training_histories",
          "marts.training_examples", "marts.scoring_candidates", "marts.recommendations",
          "marts.ranking_metrics", "marts.model_promotions", "features.vocab"]


def table_digest(cfg: Config) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent content hash per table."""
    con = duckdb.connect(str(cfg.paths.warehouse), read_only=True)
    try:
        out = {}
        for t in TABLES:
            rows = con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            out[t] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Config:
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_HOME", str(home))
    cfg = load_config(overrides={"train.epochs": 1, "train.batch_size": 128, "score.top_k": 20,
                                 "features.negatives_per_positive": 2})
    synthesize(Path(cfg.paths.landing), days=3, users=60, items=120, seed=3, start=date(2024, 1, 1))
    run_range(cfg, DAY1, DAY2)
    yield cfg
    mp.undo()


def test_every_table_holds_both_days(pipeline: Config) -> None:
    con = duckdb.connect(str(pipeline.paths.warehouse), read_only=True)
    try:
        for t in ["raw.behaviors", "marts.training_examples", "marts.user_histories", "marts.recommendations"]:
            days = [str(d) for (d,) in con.execute(f"SELECT DISTINCT ds FROM {t} ORDER BY 1").fetchall()]
            assert days == [DAY1, DAY2], t
        # evaluation of DAY2 measures DAY1's recommendations, for the champion and the baseline
        models = {m for (m,) in con.execute("SELECT DISTINCT model FROM marts.ranking_metrics WHERE ds = ?",
                                            [DAY2]).fetchall()}
        assert "popularity" in models and any(m.startswith("din@v") for m in models)
        n_eval = con.execute("SELECT max(users_evaluated) FROM marts.ranking_metrics WHERE ds = ?",
                             [DAY2]).fetchone()[0]
        assert n_eval > 0
        ranks = con.execute("SELECT min(rank), max(rank), count(DISTINCT user_id) FROM marts.recommendations "
                            "WHERE ds = ?", [DAY2]).fetchone()
        assert ranks[0] == 1 and ranks[1] <= 20 and ranks[2] > 0
    finally:
        con.close()


def test_champion_registered_in_mlflow(pipeline: Config) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    champion = client.get_model_version_by_alias(pipeline.mlflow.registered_model, "champion")
    assert champion.tags.get("ds") in (DAY1, DAY2)


@pytest.mark.parametrize("day", [DAY2, DAY1], ids=["latest-day", "older-day-after-later-ones"])
def test_rerunning_a_day_changes_no_table(pipeline: Config, day: str) -> None:
    """A rerun reuses the model trained from the same inputs and the decision logged for that day, so
    even an old day (after the champion has moved on) reproduces its tables exactly."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=pipeline.tracking_uri)
    versions = len(client.search_model_versions(f"name = '{pipeline.mlflow.registered_model}'"))
    before = table_digest(pipeline)
    run_day(pipeline, day)
    assert table_digest(pipeline) == before
    assert len(client.search_model_versions(f"name = '{pipeline.mlflow.registered_model}'")) == versions
