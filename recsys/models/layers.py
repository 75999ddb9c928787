"""Building blocks shared by the ranking models: Dice, MLP, FeatureEmbedding, ActivationUnit.

Shapes: B batch, T history length, E embedding width of one feature, D width of one behaviour (the
history features' embeddings concatenated, e.g. item + category = 2E), H hidden width.
Padding index 0 is masked everywhere. Nothing here branches on tensor values in Python, so the
modules trace under torch.compile without graph breaks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.features import FeatureMap

ACTIVATIONS = ("prelu", "dice")
ATTENTIONS = ("mlp", "dot", "bilinear")


class Dice(nn.Module):
    """Data-adaptive activation of DIN: `f(x) = p * x + (1 - p) * alpha * x`, `p = sigmoid(BN(x))`.

    BN is batch normalisation without affine parameters: batch statistics in training (their running
    averages are updated as in nn.BatchNorm1d), running statistics in eval, so an eval row's output
    does not depend on the rest of its batch. Works on [B, H] and [B, T, H] (statistics per channel,
    over every other axis); `mask` [B, T] restricts the training statistics to valid positions so
    that padding neither shifts them nor changes with the amount of padding.
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(num_features))  # 0 as in the official DIN code
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [..., H]; mask: bool [B, T] for x [B, T, H] or None. Returns [..., H]."""
        if self.training:
            mean, var = self._batch_stats(x, mask)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + self.eps))
        return x * (self.alpha + p * (1.0 - self.alpha))  # = p * x + (1 - p) * alpha * x, one op fewer

    def _batch_stats(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-channel mean and biased variance over the valid rows; updates the running averages."""
        dims = tuple(range(x.dim() - 1))
        if mask is None:
            count = x.new_full((), x.numel() // x.shape[-1], dtype=torch.float32)
            mean = x.mean(dims)
            var = (x - mean).square().mean(dims)
        else:
            weight = mask.unsqueeze(-1).to(x.dtype)
            count = weight.sum().float().clamp_min(1.0)
            mean = (x * weight).sum(dims) / count
            var = ((x - mean).square() * weight).sum(dims) / count
        with torch.no_grad():
            unbiased = var.float() * count / (count - 1.0).clamp_min(1.0)
            self.running_mean.lerp_(mean.detach().float(), self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        return mean, var


def make_activation(name: str, width: int) -> nn.Module:
    """The activation called `name`: "prelu" (one slope, init 0.25) or "dice" (per channel)."""
    if name == "prelu":
        return nn.PReLU()
    if name == "dice":
        return Dice(width)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def _activate(act: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    return act(x, mask) if isinstance(act, Dice) else act(x)


class MLP(nn.Module):
    """Hidden layers `Linear -> activation -> dropout`, then an optional output Linear (no activation).

    Works on [B, F] and [B, T, F]; `mask` [B, T] only reaches Dice (statistics of valid positions).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], activation: str = "prelu", dropout: float = 0.0,
                 out_features: int | None = None) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activations = nn.ModuleList(make_activation(activation, h) for h in hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(widths[-1], out_features) if out_features is not None else None
        self.out_features = out_features if out_features is not None else widths[-1]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [..., in_features] -> [..., out_features]."""
        for linear, act in zip(self.linears, self.activations, strict=True):
            x = self.dropout(_activate(act, linear(x), mask))
        return self.out(x) if self.out is not None else x


class Embedded(NamedTuple):
    """What FeatureEmbedding returns for a batch."""

    query: Tensor  # [B, D] embeddings of the target features the histories are attended against
    keys: Tensor  # [B, T, D] history embeddings (one row per behaviour), zero on padding
    mask: Tensor  # bool [B, T], True on valid history positions
    dense: Tensor  # [B, F] user, context and other target embeddings, then numeric features


class FeatureEmbedding(nn.Module):
    """One embedding table per feature group, rows Glorot-uniform (as the official DIN code), row 0 zero.

    The layout follows the feature map: history features in map order make one behaviour vector of
    width D = E * histories (the keys); their targets, in the same order, make the query of width D;
    every other categorical feature (user, context, a target without a history) and then every
    numeric feature go into `dense` in map order.
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int) -> None:
        super().__init__()
        histories = feature_map.sequences
        if not histories:
            raise ValueError("the feature map has no history (sequence) feature; these models need one")
        if len({f.max_len for f in histories}) != 1:
            raise ValueError("all history features must share one max_len (they describe the same behaviours)")
        self.feature_map, self.embed_dim = feature_map, embed_dim
        self.histories = tuple(f.name for f in histories)
        self.targets = tuple(str(f.target) for f in histories)
        self.others = tuple(f.name for f in feature_map.of(kind="categorical") if f.name not in self.targets)
        self.numeric = tuple(f.name for f in feature_map.of(kind="numeric"))
        self.group_of = {f.name: str(f.group) for f in feature_map.features if f.group}
        self.group_features = {g: tuple(n for n, gn in self.group_of.items() if gn == g) for g in feature_map.groups}
        self.tables = nn.ModuleDict({self._key(g): nn.Embedding(feature_map.vocab_sizes[g], embed_dim, padding_idx=0)
                                     for g in feature_map.groups})
        for g in feature_map.groups:
            self.register_buffer(self._freq_key(g), None, persistent=False)
        self.reset_parameters()

    @staticmethod
    def _key(group: str) -> str:
        return f"group_{group}"  # prefixed: a bare group name like "type" or "items" clashes with Module attributes

    @staticmethod
    def _freq_key(group: str) -> str:
        return f"frequency_{group}"

    @property
    def query_dim(self) -> int:
        """D: width of the query and of one history position."""
        return self.embed_dim * len(self.histories)

    @property
    def dense_dim(self) -> int:
        return self.embed_dim * len(self.others) + len(self.numeric)

    def table(self, group: str) -> nn.Embedding:
        return self.tables[self._key(group)]

    def reset_parameters(self) -> None:
        for table in self.tables.values():
            nn.init.xavier_uniform_(table.weight)
            with torch.no_grad():
                table.weight[0].zero_()

    def lookup(self, name: str, ids: Tensor) -> Tensor:
        """Embeddings of feature `name`'s table for ids of any shape [...] -> [..., E]."""
        return self.table(self.group_of[name])(ids)

    # The lookups stay out of torch.compile graphs: Inductor lowers the embedding backward to a
    # scatter-add that is slower on CPU than ATen's kernel (compiled DIN, item + category, 2 cores,
    # batch 256, median step: ~32.6k samples/s with the lookups inside the graph, ~34.7k outside;
    # ~29k eager).
    @torch.compiler.disable
    def embed_behaviours(self, ids: Sequence[Tensor]) -> Tensor:
        """One id tensor per history feature (map order), all of one shape [...] -> behaviours [..., D].

        Models reuse it for other behaviour lists of the same features (e.g. negative samples [B, T]
        or sessions [B, S, L]).
        """
        return torch.cat([self.lookup(n, i) for n, i in zip(self.histories, ids, strict=True)], dim=-1)

    @torch.compiler.disable
    def _lookup_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every categorical and sequence feature of the map -> its embeddings [B, E] or [B, T, E]."""
        return {name: self.lookup(name, batch[name]) for name in self.group_of}

    def forward(self, batch: Mapping[str, Tensor]) -> Embedded:
        """batch: categorical [B], numeric [B], sequences [B, T], length [B] -> Embedded."""
        emb = self._lookup_features(batch)
        keys = torch.cat([emb[n] for n in self.histories], dim=-1)
        query = torch.cat([emb[n] for n in self.targets], dim=-1)
        positions = torch.arange(keys.shape[1], device=keys.device)
        mask = positions.unsqueeze(0) < batch[self.feature_map.length].unsqueeze(1)
        parts = [emb[n] for n in self.others]
        parts += [batch[n].to(query.dtype).unsqueeze(-1) for n in self.numeric]
        dense = torch.cat(parts, dim=-1) if parts else query.new_zeros(query.shape[0], 0)
        return Embedded(query=query, keys=keys, mask=mask, dense=dense)

    def set_frequencies(self, counts: Mapping[str, Tensor | np.ndarray]) -> None:
        """Occurrences of every row in the training data, per group ([vocab_size] each).

        With them `regularization` is the paper's mini-batch aware L2 (rows scaled by 1 / their
        frequency in the data); groups without counts fall back to the in-batch frequency.
        They are not saved in the state dict (only training needs them).
        """
        for group, count in counts.items():
            table = self.table(group)
            count = torch.as_tensor(np.asarray(count), dtype=torch.float32, device=table.weight.device)
            if count.shape != (table.num_embeddings,):
                raise ValueError(f"frequencies of group {group!r}: shape {tuple(count.shape)}, "
                                 f"expected ({table.num_embeddings},)")
            setattr(self, self._freq_key(group), count)

    def regularization(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mini-batch aware L2 (DIN paper, section 4.3.1): `sum_j 1[j in batch] / n_j * ||w_j||^2`.

        Only the rows the batch touches (any feature of the group, padding excluded) are penalised,
        each scaled by 1 / n_j: its frequency in the data when `set_frequencies` was called, else its
        number of occurrences in this batch (a per-batch estimate of the same quantity). Dense over the
        table ([V] counts via index_add) so the shapes never depend on the data. Returns a scalar.
        """
        total = self.table(self.feature_map.groups[0]).weight.new_zeros(())
        for group in self.feature_map.groups:
            weight = self.table(group).weight
            ids = torch.cat([batch[name].reshape(-1) for name in self.group_features[group]])
            seen = torch.zeros(weight.shape[0], device=weight.device).index_add_(
                0, ids.long(), torch.ones(ids.shape[0], device=weight.device))
            frequency = getattr(self, self._freq_key(group))
            n = seen if frequency is None else frequency
            scale = torch.where((seen > 0) & (n > 0), 1.0 / n.clamp_min(1.0), 0.0)
            scale[0] = 0.0  # the padding row is not a feature
            total = total + (weight.float().square().sum(1) * scale).sum()
        return total


class ActivationUnit(nn.Module):
    """DIN's local activation unit: one weight per history position for a query.

    "mlp" (the paper): `a_t = MLP([q, k_t, q - k_t, q * k_t])` with hidden layers `hidden` and a
    linear output. The first Linear W = [W_q | W_k | W_d | W_p] (stored as one nn.Linear(4D, H)) is
    applied as `(W_q + W_d) q + (W_k - W_d + W_p diag(q)) k_t`: the same function, but the query term
    is computed once per row instead of once per position and the [B, T, 4D] input is never built.
    "dot": `a_t = q . k_t / sqrt(D)`; "bilinear": `a_t = q W k_t / sqrt(D)`.
    No softmax by default (the paper keeps the magnitude of interest); `softmax=True` normalises over
    the valid positions. Weights are exactly 0 on padding, and a row without history gets all zeros.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32), activation: str = "prelu", kind: str = "mlp",
                 softmax: bool = False) -> None:
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"unknown attention {kind!r}; choose one of {ATTENTIONS}")
        self.dim, self.kind, self.softmax = dim, kind, softmax
        if kind == "mlp":
            if not hidden:
                raise ValueError("the mlp activation unit needs at least one hidden layer")
            self.interaction = nn.Linear(4 * dim, hidden[0])
            self.activation = make_activation(activation, hidden[0])
            self.head = MLP(hidden[0], hidden[1:], activation, out_features=1)
        elif kind == "bilinear":
            self.bilinear = nn.Linear(dim, dim, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query [B, D], keys [B, T, D], mask bool [B, T] -> weights [B, T] (0 on padding)."""
        if self.kind == "mlp":
            hidden = _activate(self.activation, self._interaction(query, keys), mask)
            scores = self.head(hidden, mask).squeeze(-1)
        else:
            q = self.bilinear(query) if self.kind == "bilinear" else query
            scores = torch.bmm(keys, q.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.dim)
        if self.softmax:
            # finite fill: a row with no valid position gets a uniform softmax (then zeroed), not NaN
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
        return torch.where(mask, scores, torch.zeros_like(scores))

    def _interaction(self, query: Tensor, keys: Tensor) -> Tensor:
        """First Linear on [q, k, q - k, q * k] without building it: [B, D], [B, T, D] -> [B, T, H].

        For row b it is affine in k: `(W_k - W_d + W_p diag(q_b)) k + (W_q + W_d) q_b + bias`, so one
        batched matmul with a per-row [D, H] matrix does the per-position work (a quarter of the
        multiply-adds of the Linear on the [B, T, 4D] concatenation).
        """
        w_q, w_k, w_d, w_p = self.interaction.weight.split(self.dim, dim=1)  # each [H, D]
        per_row = F.linear(query, w_q + w_d, self.interaction.bias)  # [B, H]
        per_key = (w_k - w_d).t().unsqueeze(0) + query.unsqueeze(2) * w_p.t().unsqueeze(0)  # [B, D, H]
        return torch.baddbmm(per_row.unsqueeze(1), keys, per_key)
