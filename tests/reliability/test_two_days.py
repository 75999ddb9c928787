"""What the uninterrupted two-day reference run (conftest.py) published: every stage's table holds both
days, DAY1's recommendations were measured on DAY2 for the champion and the baselines, and MLflow holds
the champion. Reruns of both days (the older one after the later one) are in test_concurrency.py."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.helpers import DAY1, DAY2, overrides, restore, rows

pytestmark = pytest.mark.integration


def published(reference: Reference, sql: str, params: list | None = None) -> list[tuple]:
    return rows(reference.after_day2 / "warehouse" / "recsys.duckdb", sql, params)


@pytest.mark.parametrize("table", ["raw.behaviors", "marts.user_features", "marts.user_histories",
                                   "marts.training_examples", "marts.scoring_candidates",
                                   "marts.recommendations", "marts.model_promotions"])
def test_every_stage_table_holds_both_days(reference: Reference, table: str) -> None:
    days = published(reference, f"SELECT DISTINCT ds::VARCHAR FROM {table} ORDER BY 1")
    assert [d for (d,) in days] == [DAY1, DAY2], table


def test_day_two_measures_day_one_for_the_champion_and_the_baselines(reference: Reference) -> None:
    assert published(reference, "SELECT DISTINCT ds::VARCHAR FROM marts.ranking_metrics") == [(DAY2,)]
    models = {m for (m,) in published(reference, "SELECT DISTINCT model FROM marts.ranking_metrics")}
    assert {"popularity", "candidates"} <= models and any(m.startswith("din@v") for m in models), models
    assert published(reference, "SELECT min(users_evaluated) FROM marts.ranking_metrics")[0][0] > 0


def test_recommendations_are_ranked_top_k_lists(reference: Reference) -> None:
    top_k = int(overrides()["score.top_k"])
    for ds in (DAY1, DAY2):
        low, high, users, dupes = published(
            reference, "SELECT min(rank), max(rank), count(DISTINCT user_id), "
            "count(*) - count(DISTINCT (user_id, item_id)) FROM marts.recommendations WHERE ds = ?", [ds])[0]
        assert low == 1 and high == top_k and users > 0 and dupes == 0, (ds, low, high, users, dupes)


def test_champion_is_registered_in_mlflow_for_a_published_day(reference: Reference) -> None:
    from mlflow import MlflowClient

    restore(reference.after_day2, reference.home)
    cfg = reference.cfg
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    champion = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    assert champion.tags.get("ds") in (DAY1, DAY2)
    assert int(champion.version) <= reference.versions_day2
