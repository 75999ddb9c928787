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
    FloatTensor [B], sequences (histories and their sampled negatives) LongTensor [B, T] (oldest
    first, 0 = padding at the end), sessions LongTensor [B, S, L] (0 = padding) and the feature map's
    length key, LongTensor [B]. A model reads the keys it needs (features absent from a batch, such as
    the training-only negatives at scoring time, are skipped where the model can do without them).
    Subclasses build their layers in `__init__` and compose them in `forward`.
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int, behaviours: str = "history",
                 extra: Sequence[str] = ()) -> None:
        """`behaviours`: "history" or "sessions" (see FeatureEmbedding); `extra`: further features read."""
        super().__init__()
        self.feature_map = feature_map
        self.embedding = FeatureEmbedding(feature_map, embed_dim, behaviours=behaviours, extra=extra)

    @abstractmethod
    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        """Logits [B] (plus attention [B, T] and an auxiliary loss where the model has them)."""

    def score_candidates(self, users: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> ModelOutput:
        """Score C candidates for each of U users (eval mode): logits [U, C], attention [U, C, T] or None.

        users: every input that does not vary with the candidate (profile, context, histories [U, T],
        the length key [U]); candidates: the target-role features [U, C] (pad short lists with any
        valid id and ignore their scores). This reference expands every user C times and calls
        `forward`; models override it to compute the user side once per user instead of once per pair.
        """
        n_users, n_cand = next(iter(candidates.values())).shape
        batch = {k: v.repeat_interleave(n_cand, dim=0) for k, v in users.items()}
        batch.update({k: v.reshape(n_users * n_cand) for k, v in candidates.items()})
        out = self(batch)
        attention = None if out.attention is None else out.attention.reshape(n_users, n_cand, -1)
        return ModelOutput(logits=out.logits.reshape(n_users, n_cand), attention=attention)

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
                 mlp_hidden: Sequence[int] = (200, 80), activation: str = "prelu", dropout: float = 0.0,
                 batch_norm: bool = False) -> None:
        super().__init__(feature_map, embed_dim)
        width = self.embedding.dense_dim + 2 * self.embedding.query_dim
        self.mlp = MLP(width, mlp_hidden, activation, dropout, out_features=1, batch_norm=batch_norm)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        e = self.embedding(batch)
        logits = self.mlp(torch.cat([e.dense, e.query, sum_pool(e.keys, e.mask)], dim=-1)).squeeze(-1)
        return ModelOutput(logits=logits)

    def score_candidates(self, users: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> ModelOutput:
        """As `RankingModel.score_candidates`; the history sum is computed once per user."""
        if self.training:  # Dice's batch statistics would see a different batch
            return super().score_candidates(users, candidates)
        e = self.embedding.pairs(users, candidates)
        pooled = sum_pool(e.keys, e.mask).unsqueeze(1).expand_as(e.query)  # [U, C, D]
        return ModelOutput(logits=self.mlp(torch.cat([e.dense, e.query, pooled], dim=-1)).squeeze(-1))


def sum_pool(keys: Tensor, mask: Tensor) -> Tensor:
    """Sum of the behaviours over valid positions: keys [B, T, D], mask bool [B, T] -> [B, D]."""
    return mask.to(keys.dtype).unsqueeze(1).bmm(keys).squeeze(1)
