"""Model safety: a challenger trained on shuffled labels never becomes champion, a model trained for
another feature contract is refused with a clear error, and a model file that is an arbitrary pickle is
never executed (weights load with torch.load(weights_only=True))."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from recsys.registry import champion_version
from tests.reliability.conftest import Reference
from tests.reliability.helpers import DAY2, Proc, digest, restore, rows, set_args
from tests.unit.test_train_promote_score import shuffle_training_labels

pytestmark = pytest.mark.integration


def test_a_challenger_trained_on_shuffled_labels_never_becomes_champion(reference: Reference) -> None:
    """A broken challenger for an already decided day: trained on permuted labels, it must lose to the
    model that won that day on the same evaluation examples, and the published tables stay as they were."""
    restore(reference.after_day2, reference.home)
    cfg = reference.cfg
    champion = champion_version(cfg)
    assert champion is not None
    assert shuffle_training_labels(cfg, seed=7, before=DAY2) > 0  # the training window of DAY2
    train = Proc(["train", "--ds", DAY2, *set_args()], reference.home)
    assert train.finish(300) == 0, train.output[-3000:]
    promote = Proc(["promote", "--ds", DAY2, *set_args()], reference.home)
    assert promote.finish(300) == 0, promote.output[-3000:]
    decision = rows(cfg.paths.warehouse, "SELECT challenger_version, champion_before, champion_after, decision, "
                    "challenger_value, champion_value FROM marts.model_promotions WHERE ds = ?", [DAY2])
    assert len(decision) == 1, decision
    challenger, before, after, verdict, challenger_gauc, champion_gauc = decision[0]
    assert int(challenger) > int(champion) and before == after == champion and verdict == "kept", decision
    assert champion_gauc > challenger_gauc, decision
    assert champion_version(cfg) == champion
    score = Proc(["score", "--ds", DAY2, *set_args()], reference.home)
    assert score.finish(300) == 0, score.output[-3000:]
    assert digest(cfg.paths.warehouse, ["marts.recommendations"]) == {
        "marts.recommendations": reference.day2["marts.recommendations"]}  # still the champion's ranking


def serving_files(home: Path, name: str) -> list[Path]:
    """Every copy of a model file in the MLflow artifact store (the model_files/ of each run)."""
    found = sorted(home.glob(f"mlflow/artifacts/**/model_files/{name}"))
    assert found, f"no model_files/{name} under {home}/mlflow/artifacts"
    return found


def test_feature_map_that_does_not_match_the_marts_is_refused(reference: Reference) -> None:
    """The serving model was trained under another contract: one of its user features is not served now."""
    restore(reference.after_day2, reference.home)
    renamed = None
    for path in serving_files(reference.home, "feature_map.json"):
        fmap = json.loads(path.read_text())
        feature = next(f for f in fmap["features"] if f.get("role") == "user")
        feature["name"] = renamed = f"{feature['name']}_v0"
        path.write_text(json.dumps(fmap))
    cfg = reference.cfg
    score = Proc(["score", "--ds", DAY2, *set_args()], reference.home)  # a fresh process, as in production
    assert score.finish(300) == 1, score.output[-3000:]
    assert "feature map" in score.output and renamed in score.output, score.output[-3000:]
    assert digest(cfg.paths.warehouse) == reference.day2  # nothing published


class Exploit:
    """Unpickling this creates a file: what loading a booby-trapped model with plain pickle would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_are_never_unpickled_as_code(reference: Reference, tmp_path: Path) -> None:
    restore(reference.after_day2, reference.home)
    marker = tmp_path / "pwned"
    for path in serving_files(reference.home, "state_dict.pt"):
        path.write_bytes(pickle.dumps({"weights": Exploit(marker)}))
    cfg = reference.cfg
    score = Proc(["score", "--ds", DAY2, *set_args()], reference.home)
    assert score.finish(300) == 1, score.output[-3000:]
    assert re.search(r"(?i)weights_only|unpickl", score.output), score.output[-3000:]
    assert not marker.exists()
    assert digest(cfg.paths.warehouse) == reference.day2
