"""Config loading: overrides reach the dataclasses, and contradictory settings fail at load time."""

from __future__ import annotations

import pytest
import torch

from recsys.config import load_config


def test_overrides_reach_the_sections() -> None:
    cfg = load_config(overrides={"train.epochs": 3, "features.negatives_per_positive": 2})
    assert cfg.train.epochs == 3 and cfg.features.negatives_per_positive == 2


@pytest.mark.parametrize("popular", [-1, 5])
def test_popularity_negatives_must_fit_in_the_negatives(popular: int) -> None:
    with pytest.raises(ValueError, match="popularity_negatives_per_positive"):
        load_config(overrides={"features.negatives_per_positive": 4,
                               "features.popularity_negatives_per_positive": popular})


@pytest.mark.parametrize(("name", "value"), [("history_max_len", 0), ("negatives_per_positive", 0),
                                           ("dsin_max_sessions", 0), ("dsin_session_len", 0),
                                           ("candidates_per_user", 0), ("candidate_window_days", 0),
                                           ("session_gap_minutes", -1), ("covisitation_seeds", -1)])
def test_feature_settings_below_their_minimum_are_refused_by_name(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"features\.{name} \({value}\) must be at least"):
        load_config(overrides={f"features.{name}": value})


def test_feature_settings_at_their_minimum_load() -> None:
    from recsys.config import FEATURE_MINIMA

    cfg = load_config(overrides={f"features.{name}": low for name, low in FEATURE_MINIMA.items()}
                      | {"features.popularity_negatives_per_positive": 0})
    assert all(getattr(cfg.features, name) == low for name, low in FEATURE_MINIMA.items())


def test_unknown_section_is_refused(tmp_path) -> None:
    path = tmp_path / "recsys.yaml"
    path.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ValueError, match="trian"):
        load_config(path)


def test_overrides_of_one_section_are_validated_together() -> None:
    # raising the popularity share above the shipped negatives_per_positive is valid only together with it
    cfg = load_config(overrides={"features.popularity_negatives_per_positive": 6,
                                 "features.negatives_per_positive": 6})
    assert (cfg.features.negatives_per_positive, cfg.features.popularity_negatives_per_positive) == (6, 6)


def test_model_names_match_the_registry() -> None:
    from recsys.config import MODEL_NAMES
    from recsys.models import MODELS

    assert set(MODEL_NAMES) == set(MODELS)


def test_model_options_reach_the_model_and_unknown_models_are_refused() -> None:
    from recsys.models import build_model

    cfg = load_config(overrides={"train.model_options": {"din": {"activation": "dice", "batch_norm": True}}})
    assert cfg.train.options_of("din") == {"activation": "dice", "batch_norm": True}
    assert cfg.train.options_of("dien") == {}
    fmap = {"features": [{"name": "item_id", "kind": "categorical", "role": "target", "group": "item"},
                         {"name": "item_id_history", "kind": "sequence", "role": "history", "group": "item",
                          "max_len": 5, "target": "item_id"}],
            "vocab_sizes": {"item": 10}, "label": "label", "length": "history_length"}
    model = build_model("din", fmap, **cfg.train.options_of("din"))
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    with pytest.raises(ValueError, match="dinn"):
        load_config(overrides={"train.model_options": {"dinn": {}}})
