"""Deep Session Interest Network (Feng et al., IJCAI 2019).

The behaviours come as sessions [B, S, L] (the map's `session` features, 0 = padding, empty sessions
all zero) and embed to [B, S, L, D]. Bias encoding (session + position + unit) is added to every
behaviour; the session interest extractor (multi-head self-attention inside each session, weights
shared, then the mean over the session's valid positions) gives one vector per session [B, S, D]; the
session interest interacting layer (Bi-LSTM across the valid sessions) gives [B, S, D]. Two activation
units pool both against the target (softmax over the valid sessions). MLP input
`[user, context, other targets, numeric, q, pooled extractor, pooled Bi-LSTM]`. Users with zero sessions
get zero vectors from both pools. The flat history features are not read (the paper uses sessions only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from recsys.models.base import ModelOutput, RankingModel
from recsys.models.features import FeatureMap
from recsys.models.layers import (
    MLP,
    ActivationUnit,
    BiasEncoding,
    SessionInteraction,
    SessionInterestExtractor,
)


class DSIN(RankingModel):
    """DSIN over any feature map with at least one session feature.

    Args:
        heads: attention heads of the session interest extractor (must divide D).
        attention: "mlp" (DIN's activation unit), "dot" or "bilinear", for both pools.
        softmax: normalise the pool weights over the valid sessions (on, as the paper).
        activation: "prelu" or "dice", in the activation units and in the MLP.
        attention_activation: the activation units' own, when it differs from `activation`.
        dropout: after every hidden layer of the final MLP and in the extractor.
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int = 16, attention_hidden: Sequence[int] = (64, 32),
                 mlp_hidden: Sequence[int] = (200, 80), activation: str = "prelu", dropout: float = 0.0,
                 batch_norm: bool = False, attention_activation: str | None = None,
                 heads: int = 2, attention: str = "mlp", softmax: bool = True) -> None:
        super().__init__(feature_map, embed_dim, behaviours="sessions")
        dim, sessions = self.embedding.query_dim, feature_map.sessions[0]
        self.bias = BiasEncoding(int(sessions.max_sessions or 0), int(sessions.max_len or 0), dim)
        self.extractor = SessionInterestExtractor(dim, heads, dropout=dropout)
        self.interaction = SessionInteraction(dim)
        unit = attention_activation or activation
        self.extractor_attention = ActivationUnit(dim, attention_hidden, unit, kind=attention, softmax=softmax)
        self.interaction_attention = ActivationUnit(dim, attention_hidden, unit, kind=attention, softmax=softmax)
        self.mlp = MLP(self.embedding.dense_dim + 3 * dim, mlp_hidden, activation, dropout, out_features=1,
                       batch_norm=batch_norm)

    def sessions(self, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """keys [B, S, L, D], mask [B, S, L] -> (extracted [B, S, D], interacted [B, S, D], session mask [B, S])."""
        extracted, session_mask = self.extractor(self.bias(keys), mask)
        return extracted, self.interaction(extracted, session_mask), session_mask

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        e = self.embedding(batch)
        extracted, interacted, session_mask = self.sessions(e.keys, e.mask)
        return ModelOutput(logits=self._pool_and_score(e.dense, e.query, extracted, interacted, session_mask))

    def score_candidates(self, users: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> ModelOutput:
        """As `RankingModel.score_candidates`; the session interests (extractor and Bi-LSTM) are computed
        once per user, only the two pools and the MLP run per pair. No attention per history position."""
        if self.training:  # Dice's batch statistics would see a different batch
            return super().score_candidates(users, candidates)
        e = self.embedding.pairs(users, candidates)
        extracted, interacted, session_mask = self.sessions(e.keys, e.mask)
        return ModelOutput(logits=self._pool_and_score(e.dense, e.query, extracted, interacted, session_mask))

    def _pool_and_score(self, dense: Tensor, query: Tensor, extracted: Tensor, interacted: Tensor,
                        session_mask: Tensor) -> Tensor:
        """dense [B, (C,) F], query [B, (C,) D], sessions [B, S, D] -> logits [B, (C,)]."""
        pools = [weighted_sum(unit(query, sessions, session_mask), sessions)
                 for unit, sessions in ((self.extractor_attention, extracted),
                                        (self.interaction_attention, interacted))]
        return self.mlp(torch.cat([dense, query, *pools], dim=-1)).squeeze(-1)


def weighted_sum(weights: Tensor, values: Tensor) -> Tensor:
    """weights [B, S] or [B, C, S], values [B, S, D] -> [B, D] or [B, C, D]."""
    return weights.unsqueeze(1).bmm(values).squeeze(1) if weights.dim() == 2 else weights.bmm(values)
