"""Ranking models: a registry name -> class and `build_model`.

A new model subclasses `RankingModel`, accepts the common arguments of `build_model`
(feature map, embed_dim, attention_hidden, mlp_hidden) plus its own typed keyword options, and adds
itself to MODELS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recsys.models.base import Base, ModelOutput, RankingModel
from recsys.models.dien import DIEN
from recsys.models.din import DIN
from recsys.models.dsin import DSIN
from recsys.models.features import Feature, FeatureMap
from recsys.models.layers import init_weights

MODELS: dict[str, type[RankingModel]] = {"base": Base, "din": DIN, "dien": DIEN, "dsin": DSIN}

__all__ = ["MODELS", "DIEN", "DIN", "DSIN", "Base", "Feature", "FeatureMap", "ModelOutput", "RankingModel",
           "build_model"]


def build_model(name: str, feature_map: FeatureMap | dict[str, Any], embed_dim: int = 16,
                attention_hidden: Sequence[int] = (64, 32), mlp_hidden: Sequence[int] = (200, 80),
                **options: Any) -> RankingModel:
    """Build model `name` for `feature_map` (a FeatureMap or its dict form).

    `options` are the model's own keyword arguments (e.g. DIN's `activation="dice"`, `attention="dot"`,
    `softmax=True`); an option the model does not take raises TypeError. `init` ("glorot" or "small",
    `layers.init_weights`) is common to every model.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if not isinstance(feature_map, FeatureMap):
        feature_map = FeatureMap.from_dict(feature_map)
    init = options.pop("init", "glorot")
    model = MODELS[name](feature_map, embed_dim=embed_dim, attention_hidden=tuple(attention_hidden),
                         mlp_hidden=tuple(mlp_hidden), **options)
    init_weights(model, init)
    return model
