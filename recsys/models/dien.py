"""Deep Interest Evolution Network (Zhou et al., AAAI 2019).

Interest extractor: a GRU over the behaviour embeddings gives interests `h_t` [B, T, D] (hidden width
= behaviour width D, as the auxiliary loss takes `h_t . e_{t+1}`). Histories are left-aligned (padding
at the end), so the GRU's outputs at valid positions never see padding and no packing is needed.
Auxiliary loss (training, when the map pairs every history with a `negative_history`): `h_t` should
score the next behaviour above the sampled negative at t + 1 (`layers.auxiliary_loss`).
Attention of every interest against the target: DIN's activation unit with softmax over the valid
positions (the official DIEN code's `din_fcn_attention`; "bilinear" is the paper's `h_t W e_a` form).
Interest evolving layer: AUGRU (or AGRU / AIGRU) over the interests; its final state goes into the MLP
with `[user, context, other targets, numeric, q, sum_t e_t, q * sum_t e_t]` (the official code's input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.base import ModelOutput, RankingModel, sum_pool
from recsys.models.features import FeatureMap
from recsys.models.layers import MLP, ActivationUnit, InterestEvolution, auxiliary_loss, gru_sequence, last_valid_step


def valid_steps(mask: Tensor) -> int:
    """1 + the last valid position of any row of mask [B, T] (at least 1, so a GRU always has input)."""
    return max(last_valid_step(mask), 1)


class DIEN(RankingModel):
    """DIEN over any feature map with at least one history feature.

    Args:
        evolution: "augru" (the paper's choice), "agru" or "aigru".
        attention: "mlp" (DIN's activation unit), "dot" or "bilinear".
        softmax: normalise the attention over the valid positions (on: the paper's form).
        aux_loss: compute the auxiliary loss in training when the map has negative histories.
        sum_pooling: also feed `sum_t e_t` and `q * sum_t e_t` to the MLP (the official code; off: only
            `[dense, q, h'_T]`, as FuxiCTR's default).
        activation: "prelu" or "dice", in the activation unit and in the MLP.
        attention_activation: the activation unit's own, when it differs from `activation`.
        dropout: after every hidden layer of the final MLP.
        batch_norm: BatchNorm1d after every hidden Linear of the final MLP (RecBole's and FuxiCTR's DNN).
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int = 16, attention_hidden: Sequence[int] = (64, 32),
                 mlp_hidden: Sequence[int] = (200, 80), activation: str = "prelu", dropout: float = 0.0,
                 batch_norm: bool = False, attention_activation: str | None = None,
                 evolution: str = "augru", attention: str = "mlp", softmax: bool = True,
                 aux_loss: bool = True, sum_pooling: bool = True) -> None:
        paired = [feature_map.negative_of(h.name) for h in feature_map.histories]
        negatives = tuple(n.name for n in paired if n is not None) if aux_loss and all(paired) else ()
        super().__init__(feature_map, embed_dim, extra=negatives)
        self.negatives = negatives  # in history order, so they embed like the histories
        dim = self.embedding.query_dim
        self.extractor = nn.GRU(dim, dim, batch_first=True)  # its parameters; run by `gru_sequence`
        self.attention = ActivationUnit(dim, attention_hidden, attention_activation or activation,
                                        kind=attention, softmax=softmax)
        self.evolution = InterestEvolution(dim, dim, evolution)
        self.sum_pooling = sum_pooling
        width = self.embedding.dense_dim + (4 if sum_pooling else 2) * dim  # [dense, q, (sum e, q * sum e,) h'_T]
        self.mlp = MLP(width, mlp_hidden, activation, dropout, out_features=1, batch_norm=batch_norm)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        e = self.embedding(batch)
        steps = valid_steps(e.mask)  # positions after the batch's longest history change nothing
        keys, mask = e.keys[:, :steps], e.mask[:, :steps]
        interests = gru_sequence(keys, self.extractor)  # [B, steps, D]; left-aligned: padding comes after
        weights = self.attention(e.query, interests, mask)  # [B, steps], 0 on padding
        final = self.evolution(interests, weights, mask)  # [B, D]
        aux = None
        if self.training and self.negatives and all(n in batch for n in self.negatives):
            negatives = self.embedding.embed_behaviours([batch[n][:, :steps] for n in self.negatives])
            aux = auxiliary_loss(interests, keys, negatives, mask)
        logits = self._logits(e.dense, e.query, sum_pool(keys, mask), final)
        return ModelOutput(logits=logits, attention=F.pad(weights, (0, e.keys.shape[1] - steps)), aux_loss=aux)

    def score_candidates(self, users: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> ModelOutput:
        """As `RankingModel.score_candidates`; the interests, their input projection into the evolving GRU
        and the history sum are computed once per user, only the attention and the AUGRU run per pair."""
        if self.training:  # Dice's batch statistics would see a different batch
            return super().score_candidates(users, candidates)
        e = self.embedding.pairs(users, candidates)
        n_users, n_cand = e.query.shape[:2]
        steps = valid_steps(e.mask)
        keys, mask = e.keys[:, :steps], e.mask[:, :steps]
        interests = gru_sequence(keys, self.extractor)  # [U, steps, D]
        weights = self.attention(e.query, interests, mask)  # [U, C, steps]

        def per_pair(x: Tensor) -> Tensor:  # [U, ...] -> [U * C, ...]
            return x.unsqueeze(1).expand(n_users, n_cand, *x.shape[1:]).reshape(n_users * n_cand, *x.shape[1:])

        final = self.evolution.evolve(per_pair(self.evolution.project(interests)), weights.flatten(0, 1),
                                      per_pair(mask)).view(n_users, n_cand, -1)
        pooled = sum_pool(keys, mask).unsqueeze(1).expand_as(e.query)
        logits = self._logits(e.dense, e.query, pooled, final)
        return ModelOutput(logits=logits, attention=F.pad(weights, (0, e.keys.shape[1] - steps)))

    def _logits(self, dense: Tensor, query: Tensor, pooled: Tensor, final: Tensor) -> Tensor:
        """MLP on `[dense, q, sum e, q * sum e, h'_T]` ([..., F], then [..., D] each) -> logits [...]."""
        parts = [dense, query, pooled, query * pooled, final] if self.sum_pooling else [dense, query, final]
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
