"""Deep Interest Network (Zhou et al., KDD 2018).

The history is pooled with the local activation unit: `v = sum_t a_t * k_t` over valid positions,
`a_t = MLP([q, k_t, q - k_t, q * k_t])` without softmax by default. The MLP input is
`[user, context, other targets, numeric, q, v, v * q]` (the official code also feeds `v * q`).
PReLU or Dice in both MLPs; the mini-batch aware L2 is `RankingModel.regularization`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from recsys.models.base import ModelOutput, RankingModel
from recsys.models.features import FeatureMap
from recsys.models.layers import MLP, ActivationUnit


class DIN(RankingModel):
    """DIN over any feature map with at least one history feature.

    Args:
        attention: "mlp" (the paper's activation unit), "dot" or "bilinear".
        softmax: normalise the attention weights over the valid positions (off in the paper).
        activation: "prelu" or "dice", in the activation unit and in the MLP.
        attention_activation: the activation unit's own, when it differs from `activation`.
        dropout: after every hidden layer of the final MLP.
        batch_norm: BatchNorm1d after every hidden Linear of the final MLP (RecBole's and FuxiCTR's DNN).
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int = 16, attention_hidden: Sequence[int] = (64, 32),
                 mlp_hidden: Sequence[int] = (200, 80), activation: str = "prelu", dropout: float = 0.0,
                 batch_norm: bool = False, attention_activation: str | None = None,
                 attention: str = "mlp", softmax: bool = False) -> None:
        super().__init__(feature_map, embed_dim)
        dim = self.embedding.query_dim
        self.attention = ActivationUnit(dim, attention_hidden, attention_activation or activation,
                                        kind=attention, softmax=softmax)
        self.mlp = MLP(self.embedding.dense_dim + 3 * dim, mlp_hidden, activation, dropout, out_features=1,
                       batch_norm=batch_norm)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        e = self.embedding(batch)
        weights = self.attention(e.query, e.keys, e.mask)  # [B, T], 0 on padding
        pooled = weights.unsqueeze(1).bmm(e.keys).squeeze(1)  # [B, D]
        return ModelOutput(logits=self._logits(e.dense, e.query, pooled), attention=weights)

    def score_candidates(self, users: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> ModelOutput:
        """As `RankingModel.score_candidates`, but the history is embedded and its keys projected once per
        user; the C candidates of a user share them (ActivationUnit with queries [U, C, D])."""
        if self.training:  # Dice's batch statistics would see a different batch
            return super().score_candidates(users, candidates)
        e = self.embedding.pairs(users, candidates)
        weights = self.attention(e.query, e.keys, e.mask)  # [U, C, T]
        pooled = weights.bmm(e.keys)  # [U, C, D]
        return ModelOutput(logits=self._logits(e.dense, e.query, pooled), attention=weights)

    def _logits(self, dense: Tensor, query: Tensor, pooled: Tensor) -> Tensor:
        """MLP on `[dense, q, v, v * q]`: [..., F], [..., D], [..., D] -> logits [...]."""
        return self.mlp(torch.cat([dense, query, pooled, pooled * query], dim=-1)).squeeze(-1)
