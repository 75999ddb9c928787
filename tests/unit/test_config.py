"""Config loading: overrides reach the dataclasses, and contradictory settings fail at load time."""

from __future__ import annotations

import pytest

from recsys.config import load_config


def test_overrides_reach_the_sections() -> None:
    cfg = load_config(overrides={"train.epochs": 3, "features.negatives_per_positive": 2})
    assert cfg.train.epochs == 3 and cfg.features.negatives_per_positive == 2


@pytest.mark.parametrize("popular", [-1, 5])
def test_popularity_negatives_must_fit_in_the_negatives(popular: int) -> None:
    with pytest.raises(ValueError, match="popularity_negatives_per_positive"):
        load_config(overrides={"features.negatives_per_positive": 4,
                               "features.popularity_negatives_per_positive": popular})


def test_unknown_section_is_refused(tmp_path) -> None:
    path = tmp_path / "recsys.yaml"
    path.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ValueError, match="trian"):
        load_config(path)


def test_overrides_of_one_section_are_validated_together() -> None:
    # lowering both counts below the shipped popularity share is valid only as one change
    cfg = load_config(overrides={"features.negatives_per_positive": 1,
                                 "features.popularity_negatives_per_positive": 0})
    assert (cfg.features.negatives_per_positive, cfg.features.popularity_negatives_per_positive) == (1, 0)
