"""The pipeline on real data: the last days of MovieLens-100K from ../shared (skipped when absent).

MovieLens may not be redistributed, so the test reads it from the shared folder and never copies it
into the repository.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pytest

from recsys.config import load_config
from recsys.data.importers import import_movielens
from recsys.pipeline import dates, run_day, run_stage
from tests.conftest import SHARED_ML100K

pytestmark = pytest.mark.integration

LAST = date(1998, 4, 22)
WINDOW = 21  # days imported; the one before the last runs through every stage, the last is evaluated


@pytest.mark.skipif(not SHARED_ML100K.is_dir(), reason="../shared/data/ml-100k is not on this machine")
def test_last_days_of_movielens(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    # a 3-day training window: each earlier day costs a dbt build here, and the stages are what is tested;
    # one model (every model trains on this data in tests/unit and bench/models.py)
    cfg = load_config(overrides={"train.epochs": 1, "train.train_days": 3, "train.models": ["din"],
                                 "features.negatives_per_positive": 1,
                                 "features.popularity_negatives_per_positive": 0,
                                 "validate.min_row_ratio": 0.02, "validate.max_row_ratio": 50.0})
    first = LAST - timedelta(days=WINDOW - 1)
    summary = import_movielens(SHARED_ML100K, cfg.paths.landing, first, LAST)
    assert summary.rows_written > 1000
    run_days = [d.isoformat() for d in (LAST - timedelta(days=1), LAST)]
    before = [ds for ds in dates(first.isoformat(), (LAST - timedelta(days=2)).isoformat())
              if (cfg.paths.landing / "behaviors" / f"ds={ds}").is_dir()]  # MovieLens has days without ratings
    for ds in before:
        run_stage("ingest", ds, cfg)
    for ds in before[-cfg.train.train_days:]:  # training examples for the training window
        run_stage("transform", ds, cfg)
    run_day(cfg, run_days[0])  # every stage once on real data
    for stage in ("ingest", "evaluate"):  # what measuring run_days[0]'s recommendations needs of the last day
        run_stage(stage, run_days[1], cfg)
    con = duckdb.connect(str(cfg.paths.warehouse), read_only=True)
    try:
        n_raw = con.execute("SELECT count(*) FROM raw.behaviors").fetchone()[0]
        assert n_raw == summary.rows_written  # every imported rating was accepted
        recs = con.execute("SELECT count(DISTINCT user_id) FROM marts.recommendations WHERE ds = ?",
                           [run_days[0]]).fetchone()[0]
        assert recs > 0
        models = con.execute("SELECT DISTINCT model FROM marts.ranking_metrics WHERE ds = ?",
                             [run_days[1]]).fetchall()
        # the champion, the popularity / co-visitation / Base baselines and the candidate list (recall@C)
        assert {("popularity",), ("candidates",)} <= set(models) and len(models) >= 3
    finally:
        con.close()
