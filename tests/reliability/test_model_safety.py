"""Model safety: a model trained for another feature contract is refused with a clear error, and a model
file that is an arbitrary pickle is never executed (weights load with torch.load(weights_only=True))."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.helpers import DAY2, Proc, digest, restore, set_args

pytestmark = pytest.mark.integration


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
