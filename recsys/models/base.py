"""The model interface (RankingModel, ModelOutput) and the Base model of the DIN paper.

Base (DIN paper, section 4.2 "Base Model"): embed target, profile and context; sum the history
embeddings over the valid positions; concatenate -> MLP -> logit. No attention.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from recsys.models.features import FeatureMap
from recsys.models.layers import MLP, FeatureEmbedding


class ModelOutput(NamedTuple):
    """What every ranking model returns; the CTR loss (BCE with logits) is computed outside."""

    logits: Tensor  # [B]
    attention: Tensor | None = None  # [B, T] weight per history position, 0 on padding (explanations)
    aux_loss: Tensor | None = None  # scalar, added to the CTR loss by the trainer (DIEN)


class RankingModel(nn.Module, ABC):
    """A CTR model over a feature map: `forward(batch) -> ModelOutput`.

    A batch is a dict of tensors keyed by feature name: categorical LongTensor [B], numeric
    FloatTensor [B], sequences LongTensor [B, T] (oldest first, 0 = padding at the end) and the
    feature map's length key, LongTensor [B]. Subclasses build their layers in `__init__` and
    compose them in `forward`.
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.embedding = FeatureEmbedding(feature_map, embed_dim)

    @abstractmethod
    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        """Logits [B] (plus attention [B, T] and an auxiliary loss where the model has them)."""

    def regularization(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mini-batch aware L2 on the embedding rows the batch touches (see FeatureEmbedding); a scalar.

        The trainer multiplies it by its coefficient and adds it to the loss.
        """
        return self.embedding.regularization(batch)


class Base(RankingModel):
    """Embedding & MLP: MLP input `[user, context, other targets, numeric, q, sum_t k_t]` -> logit.

    `attention_hidden` is accepted (and unused) so that every model builds from one config.
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int = 16, attention_hidden: Sequence[int] = (64, 32),
                 mlp_hidden: Sequence[int] = (200, 80), activation: str = "prelu", dropout: float = 0.0) -> None:
        super().__init__(feature_map, embed_dim)
        width = self.embedding.dense_dim + 2 * self.embedding.query_dim
        self.mlp = MLP(width, mlp_hidden, activation, dropout, out_features=1)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        e = self.embedding(batch)
        valid = e.mask.to(e.keys.dtype).unsqueeze(1)  # [B, 1, T]
        pooled = valid.bmm(e.keys).squeeze(1)  # [B, D]: sum over valid positions
        logits = self.mlp(torch.cat([e.dense, e.query, pooled], dim=-1)).squeeze(-1)
        return ModelOutput(logits=logits)
