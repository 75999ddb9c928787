"""Building blocks shared by the ranking models: Dice, MLP, FeatureEmbedding, ActivationUnit.

Shapes: B batch, T history length, E embedding width of one feature, D width of one behaviour (the
history features' embeddings concatenated, e.g. item + category = 2E), H hidden width.
Padding index 0 is masked everywhere. Nothing here branches on tensor values in Python, so the
modules trace under torch.compile without graph breaks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.features import FeatureMap

ACTIVATIONS = ("prelu", "dice", "sigmoid", "relu")
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
    """The activation called `name`: "prelu" (one slope, init 0.25), "dice" (per channel), "sigmoid"
    (the official DIN code's activation unit) or "relu" (FuxiCTR's DNN default)."""
    if name == "prelu":
        return nn.PReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "relu":
        return nn.ReLU()
    if name == "dice":
        return Dice(width)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def _activate(act: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    return act(x, mask) if isinstance(act, Dice) else act(x)


def _normalize(norm: nn.Module, x: Tensor) -> Tensor:
    """BatchNorm1d over every leading dimension of x [..., F] (Identity passes x through)."""
    if isinstance(norm, nn.Identity) or x.dim() == 2:
        return norm(x)
    return norm(x.reshape(-1, x.shape[-1])).view_as(x)


INITS = ("glorot", "small")


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise `model` by `scheme` (padding rows stay zero).

    "glorot": as built (embedding rows Glorot-uniform as the official DIN code; PyTorch's defaults elsewhere).
    "small": FuxiCTR's defaults: embedding rows N(0, 1e-4), every Linear and GRU cell Xavier-normal with
    zero biases. Tiny embeddings start every history near zero, so the attention and the recurrences
    begin close to linear; on the peers' MovieLens protocol it gave DIN and DIEN a higher test GAUC.
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {INITS}")
    if scheme == "glorot":
        return
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1e-4)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear | nn.GRUCell):
            for name, param in module.named_parameters(recurse=False):
                (nn.init.zeros_ if name.startswith("bias") else nn.init.xavier_normal_)(param)


class MLP(nn.Module):
    """Hidden layers `Linear -> [BatchNorm] -> activation -> dropout`, then an optional output Linear.

    Works on [B, F] and [B, T, F]; `mask` [B, T] only reaches Dice (statistics of valid positions).
    `batch_norm` normalises every hidden layer over all leading dimensions (train: batch statistics,
    eval: running ones), as the DNNs of RecBole and FuxiCTR do.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], activation: str = "prelu", dropout: float = 0.0,
                 out_features: int | None = None, batch_norm: bool = False) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) if batch_norm else nn.Identity() for h in hidden)
        self.activations = nn.ModuleList(make_activation(activation, h) for h in hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(widths[-1], out_features) if out_features is not None else None
        self.out_features = out_features if out_features is not None else widths[-1]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [..., in_features] -> [..., out_features]."""
        for linear, norm, act in zip(self.linears, self.norms, self.activations, strict=True):
            x = self.dropout(_activate(act, _normalize(norm, linear(x)), mask))
        return self.out(x) if self.out is not None else x


class Embedded(NamedTuple):
    """What FeatureEmbedding returns for a batch (shapes for `behaviours="history"`; sessions in brackets).

    From `pairs` (U users x C candidates) the query is [U, C, D] and dense [U, C, F]; keys and mask
    stay per user.
    """

    query: Tensor  # [B, D] embeddings of the target features the behaviours are attended against
    keys: Tensor  # [B, T, D] ([B, S, L, D]) behaviour embeddings (one row per behaviour), zero on padding
    mask: Tensor  # bool [B, T] ([B, S, L]), True on valid behaviours
    dense: Tensor  # [B, F] user, context and other target embeddings, then numeric features


BEHAVIOURS = ("history", "sessions")


class FeatureEmbedding(nn.Module):
    """One embedding table per feature group, rows Glorot-uniform (as the official DIN code), row 0 zero.

    The layout follows the feature map: the behaviour features (role `behaviours`: "history" [B, T] or
    "sessions" [B, S, L]) in map order make one behaviour vector of width D = E * features (the keys);
    their targets, in the same order, make the query of width D; every other categorical feature (user,
    context, a target without a behaviour list) and then every numeric feature go into `dense` in map
    order. `extra` names further features the model embeds itself (e.g. DIEN's negative histories); they
    count for the mini-batch aware L2.
    """

    def __init__(self, feature_map: FeatureMap, embed_dim: int, behaviours: str = "history",
                 extra: Sequence[str] = ()) -> None:
        super().__init__()
        if behaviours not in BEHAVIOURS:
            raise ValueError(f"unknown behaviours {behaviours!r}; choose one of {BEHAVIOURS}")
        features = feature_map.histories if behaviours == "history" else feature_map.sessions
        if not features:
            kind = "history (sequence)" if behaviours == "history" else "session"
            raise ValueError(f"the feature map has no {kind} feature; this model needs one")
        if len({f.max_len for f in features}) != 1:
            raise ValueError(f"all {behaviours} features must share one max_len (they describe the same behaviours)")
        self.feature_map, self.embed_dim, self.behaviours = feature_map, embed_dim, behaviours
        self.histories = tuple(f.name for f in features)  # the behaviour features (histories or sessions)
        self.targets = tuple(str(f.target) for f in features)
        self.others = tuple(f.name for f in feature_map.of(kind="categorical") if f.name not in self.targets)
        self.numeric = tuple(f.name for f in feature_map.of(kind="numeric"))
        self.group_of = {f.name: str(f.group) for f in feature_map.features if f.group}
        self.looked_up = tuple(f.name for f in feature_map.of(kind="categorical")) + self.histories
        self.reads = self.looked_up + tuple(extra)
        self.group_features = {g: tuple(n for n in self.reads if self.group_of[n] == g) for g in feature_map.groups}
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
        """D: width of the query and of one behaviour."""
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

    # `keep_lookups_eager` puts these two out of torch.compile graphs before a model is compiled.
    def embed_behaviours(self, ids: Sequence[Tensor]) -> Tensor:
        """One id tensor per behaviour feature (map order), all of one shape [...] -> behaviours [..., D].

        Models reuse it for other behaviour lists of the same features (e.g. negative samples [B, T]).
        """
        return torch.cat([self.lookup(n, i) for n, i in zip(self.histories, ids, strict=True)], dim=-1)

    def _lookup_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every categorical and behaviour feature -> its embeddings [B, E] / [B, T, E] / [B, S, L, E]."""
        return {name: self.lookup(name, batch[name]) for name in self.looked_up if name in batch}

    def behaviour_mask(self, batch: Mapping[str, Tensor]) -> Tensor:
        """bool [B, T] from the length key (histories) or [B, S, L] from `ids != 0` (sessions)."""
        first = batch[self.histories[0]]
        if self.behaviours == "sessions":
            return first != 0
        positions = torch.arange(first.shape[-1], device=first.device)
        return positions.unsqueeze(0) < batch[self.feature_map.length].unsqueeze(1)

    def forward(self, batch: Mapping[str, Tensor]) -> Embedded:
        """batch: categorical [B], numeric [B], behaviours [B, T] or [B, S, L], length [B] -> Embedded."""
        emb = self._lookup_features(batch)
        keys = torch.cat([emb[n] for n in self.histories], dim=-1)
        query = torch.cat([emb[n] for n in self.targets], dim=-1)
        parts = [emb[n] for n in self.others]
        parts += [batch[n].to(query.dtype).unsqueeze(-1) for n in self.numeric]
        dense = torch.cat(parts, dim=-1) if parts else query.new_zeros(query.shape[0], 0)
        return Embedded(query=query, keys=keys, mask=self.behaviour_mask(batch), dense=dense)

    def pairs(self, users: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> Embedded:
        """U users x C candidates: keys/mask per user, query [U, C, D], dense [U, C, F].

        users: every feature that does not vary with the candidate ([U], [U, T], [U, S, L], length [U]);
        candidates: the target-role features [U, C]. A dense feature comes from `candidates` when it is
        there (broadcast over nothing) and from `users` otherwise (broadcast over the C candidates).
        """
        n_users, n_cand = next(iter(candidates.values())).shape
        emb = self._lookup_features(users)
        cand = self._lookup_features(candidates)
        keys = torch.cat([emb[n] for n in self.histories], dim=-1)
        query = torch.cat([cand[n] for n in self.targets], dim=-1)
        parts = [cand[n] if n in cand else emb[n].unsqueeze(1).expand(n_users, n_cand, -1) for n in self.others]
        for n in self.numeric:
            value = candidates[n] if n in candidates else users[n].unsqueeze(1).expand(n_users, n_cand)
            parts.append(value.to(query.dtype).unsqueeze(-1))
        dense = torch.cat(parts, dim=-1) if parts else query.new_zeros(n_users, n_cand, 0)
        return Embedded(query=query, keys=keys, mask=self.behaviour_mask(users), dense=dense)

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

        Only the rows the batch touches (any feature of the group the model reads, padding excluded) are
        penalised, each scaled by 1 / n_j: its frequency in the data when `set_frequencies` was called,
        else its number of occurrences in this batch (a per-batch estimate of the same quantity). Dense
        over the table ([V] counts via index_add) so the shapes never depend on the data. Returns a scalar.
        """
        total = self.table(self.feature_map.groups[0]).weight.new_zeros(())
        for group in self.feature_map.groups:
            names = [name for name in self.group_features[group] if name in batch]
            if not names:
                continue
            weight = self.table(group).weight
            ids = torch.cat([batch[name].reshape(-1) for name in names])
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
        """query [B, D] or [B, C, D] (C candidates per row), keys [B, T, D], mask bool [B, T].

        Returns weights [B, T] or [B, C, T], 0 on padding. The keys are projected once per row, not
        once per candidate.
        """
        if self.kind == "mlp" and query.dim() == 3:
            by_key = mask.unsqueeze(2).expand(-1, -1, query.shape[1])  # [B, T, C]: the layout of the bmm below
            hidden = _activate(self.activation, self._interaction(query, keys), by_key)
            scores = self.head(hidden, by_key).squeeze(-1).transpose(1, 2)  # [B, C, T]
        elif self.kind == "mlp":
            hidden = _activate(self.activation, self._interaction(query, keys), mask)
            scores = self.head(hidden, mask).squeeze(-1)
        else:
            q = self.bilinear(query) if self.kind == "bilinear" else query
            if q.dim() == 2:
                scores = torch.bmm(keys, q.unsqueeze(-1)).squeeze(-1)  # [B, T]
            else:
                scores = torch.bmm(q, keys.transpose(1, 2))  # [B, C, T]
            scores = scores / math.sqrt(self.dim)
        if query.dim() == 3:
            mask = mask.unsqueeze(1).expand(-1, query.shape[1], -1)  # [B, C, T]
        if self.softmax:
            # finite fill: a row with no valid position gets a uniform softmax (then zeroed), not NaN
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
        return torch.where(mask, scores, torch.zeros_like(scores))

    def _interaction(self, query: Tensor, keys: Tensor) -> Tensor:
        """First Linear on [q, k, q - k, q * k] without building it: [B, D], [B, T, D] -> [B, T, H]
        (queries [B, C, D] -> [B, T, C, H]).

        For row b it is affine in k: `(W_k - W_d + W_p diag(q_b)) k + (W_q + W_d) q_b + bias`, so one
        batched matmul with a per-row [D, H] matrix does the per-position work (a quarter of the
        multiply-adds of the Linear on the [B, T, 4D] concatenation). With C queries per row the C
        matrices are side by side, [D, C * H], still one matmul per row; its [B, T, C, H] layout is
        kept (the layers after it work on the last axis) so nothing is copied.
        """
        w_q, w_k, w_d, w_p = self.interaction.weight.split(self.dim, dim=1)  # each [H, D]
        per_row = F.linear(query, w_q + w_d, self.interaction.bias)  # [B, (C,) H]
        per_key = (w_k - w_d).t() + query.unsqueeze(-1) * w_p.t()  # [B, (C,) D, H]
        if query.dim() == 2:
            return torch.baddbmm(per_row.unsqueeze(1), keys, per_key)
        n_rows, n_cand, dim, hidden = per_key.shape
        side_by_side = per_key.permute(0, 2, 1, 3).reshape(n_rows, dim, n_cand * hidden)
        out = torch.bmm(keys, side_by_side).view(n_rows, keys.shape[1], n_cand, hidden)
        return out + per_row.unsqueeze(1)  # [B, T, C, H]


# --------------------------------------------------------------------------- DIEN

EVOLUTIONS = ("augru", "agru", "aigru")


def last_valid_step(mask: Tensor) -> int:
    """1 + the last position that is valid in any row of mask [B, T]; 0 when none is."""
    return int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 0


class InterestEvolution(nn.Module):
    """DIEN's interest evolving layer: a GRU over interests h [B, T, H] steered by attention a [B, T].

    Parameters in nn.GRUCell's layout (gates r, z, n; PyTorch's z is the paper's `1 - u`), so with
    a = 1 an AUGRU step is exactly a GRU step. Every kind is written `h' = h + u' * (n - h)`:
    "augru" (the paper): `u' = a * u`; "agru": `u' = a` (attention replaces the update gate);
    "aigru": a plain GRU on `a * x` (`u' = mask * u`). AUGRU and AGRU keep the state wherever a = 0,
    so padding (a = 0 there) never moves it; AIGRU is masked explicitly. The input projection is one
    matmul over all positions; the recurrence (`GRUFunction`) runs only up to the last valid position
    of the batch.
    """

    def __init__(self, input_size: int, hidden_size: int, kind: str = "augru") -> None:
        super().__init__()
        if kind not in EVOLUTIONS:
            raise ValueError(f"unknown interest evolution {kind!r}; choose one of {EVOLUTIONS}")
        self.kind, self.hidden_size = kind, hidden_size
        self.cell = nn.GRUCell(input_size, hidden_size)

    def project(self, x: Tensor) -> Tensor:
        """Input projection without bias, [..., T, input] -> [..., T, 3H] (per user in candidate scoring)."""
        return F.linear(x, self.cell.weight_ih)

    def forward(self, x: Tensor, attention: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, H_in], attention [B, T] (0 on padding), mask bool [B, T] -> final state [B, H].

        Rows without a valid position get zeros.
        """
        return self.evolve(self.project(x), attention, mask)

    def evolve(self, projected: Tensor, attention: Tensor, mask: Tensor) -> Tensor:
        """As `forward`, from `projected = self.project(x)` [B, T, 3H]."""
        steps = last_valid_step(mask)
        if steps == 0:
            return projected.new_zeros(projected.shape[0], self.hidden_size)
        a = attention[:, :steps].to(projected.dtype).unsqueeze(-1)  # [B, steps, 1]
        gi = projected[:, :steps]
        gi = (a * gi if self.kind == "aigru" else gi) + self.cell.bias_ih
        gate = mask[:, :steps].to(gi.dtype).unsqueeze(-1) if self.kind == "aigru" else a
        states = GRUFunction.apply(gi.transpose(0, 1).contiguous(), gate.transpose(0, 1).contiguous(),
                                   self.cell.weight_hh, self.cell.bias_hh, self.kind == "agru")
        return states[-1]  # the state never moves after a row's last valid position


def gru_sequence(x: Tensor, gru: nn.GRU) -> Tensor:
    """All outputs of a one-layer, unidirectional, batch-first `gru` over x [B, T, D] -> [B, T, H].

    The same function as `gru(x)[0]` with `gru`'s own parameters, through `GRUFunction` (measured
    faster than nn.GRU's CPU path on DIEN's training step: its autograd records ~15 nodes per step
    and a slow concatenation per step in the backward).
    """
    gi = F.linear(x.transpose(0, 1), gru.weight_ih_l0, gru.bias_ih_l0)  # [T, B, 3H]
    return GRUFunction.apply(gi, None, gru.weight_hh_l0, gru.bias_hh_l0, False).transpose(0, 1)


class GRUFunction(torch.autograd.Function):
    """The GRU recurrence, optionally steered per step, with a hand-written backward (one autograd node).

    Autograd over a Python loop records ~30 small nodes per step (slices, chunks and their backward
    scatters); here a step is a handful of ops writing into preallocated buffers, and the recurrent
    weight gradient is one matmul over all steps after the loop. Every per-step view is taken once
    before the loop (`unbind`), not by indexing inside it. Checked against finite differences in the
    tests.

    forward(gi [T, B, 3H] input projections incl. bias, gate [T, B, 1] or None, w_hh [3H, H], b_hh [3H],
    agru) -> states [T, B, H] from a zero initial state, `h_t = h_{t-1} + u'_t * (n_t - h_{t-1})` with
    `u' = gate * (1 - z)` (AUGRU; gate None: a plain GRU) or `u' = gate` (agru=True: AGRU).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx: Any, gi: Tensor, gate: Tensor | None, w_hh: Tensor, b_hh: Tensor, agru: bool) -> Tensor:
        steps, rows, width = gi.shape
        hidden = width // 3
        states, candidate = gi.new_empty(steps, rows, hidden), gi.new_empty(steps, rows, hidden)
        update = gi.new_empty(steps, rows, hidden) if gate is not None else None  # u'; a plain GRU's is 1 - z
        recurrent = gi.new_empty(steps, rows, width)  # W_hh h_{t-1} + b_hh
        reset_update = gi.new_empty(steps, rows, 2 * hidden)  # r, z
        gi_rz, gi_n = gi[..., :2 * hidden].unbind(0), gi[..., 2 * hidden:].unbind(0)
        rec, rec_rz, rec_n = (recurrent.unbind(0), recurrent[..., :2 * hidden].unbind(0),
                              recurrent[..., 2 * hidden:].unbind(0))
        rz, r, z = (reset_update.unbind(0), reset_update[..., :hidden].unbind(0),
                    reset_update[..., hidden:].unbind(0))
        h_t, n_t = states.unbind(0), candidate.unbind(0)
        u_t, g_t = (update.unbind(0), gate.unbind(0)) if gate is not None else (None, None)
        h, w_t = gi.new_zeros(rows, hidden), w_hh.t()
        for t in range(steps):
            torch.addmm(b_hh, h, w_t, out=rec[t])
            torch.add(gi_rz[t], rec_rz[t], out=rz[t]).sigmoid_()
            torch.addcmul(gi_n[t], r[t], rec_n[t], out=n_t[t]).tanh_()
            if g_t is None:  # h' = n + z (h - n); the backward rebuilds u' = 1 - z
                torch.addcmul(n_t[t], z[t], h - n_t[t], out=h_t[t])
            else:
                if agru:
                    u_t[t].copy_(g_t[t])
                else:
                    torch.mul(1.0 - z[t], g_t[t], out=u_t[t])
                torch.addcmul(h, u_t[t], n_t[t] - h, out=h_t[t])
            h = h_t[t]
        ctx.save_for_backward(gate, w_hh, states, update, candidate, recurrent, reset_update)
        ctx.agru = agru
        return states

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_states: Tensor) -> tuple[Tensor | None, ...]:
        """Step by step on [B, H] tensors (cache-resident: cheaper than the same ops over all steps at
        once). d(gi) is written in place: its r and z parts are also the recurrent gradients, so only
        the n part of those (`d_pre_n * r`) needs a buffer of its own; the weight gradient is then two
        matmuls over all steps after the loop."""
        gate, w_hh, states, update, candidate, recurrent, reset_update = ctx.saved_tensors
        steps, rows, hidden = states.shape
        agru, plain = ctx.agru, gate is None
        d_gi = states.new_empty(steps, rows, 3 * hidden)  # r, z, pre-activation of n
        d_rec_n = states.new_empty(steps, rows, hidden)  # d(W_hn h_{t-1} + b_hn) = d_pre_n * r
        d_gate = torch.empty_like(gate) if not plain and ctx.needs_input_grad[1] else None
        if agru:
            d_gi[..., hidden:2 * hidden] = 0.0  # z does not enter an AGRU
        d_r, d_z = d_gi[..., :hidden].unbind(0), d_gi[..., hidden:2 * hidden].unbind(0)
        d_rz, d_n, d_rn = d_gi[..., :2 * hidden].unbind(0), d_gi[..., 2 * hidden:].unbind(0), d_rec_n.unbind(0)
        r_t, z_t = reset_update[..., :hidden].unbind(0), reset_update[..., hidden:].unbind(0)
        n_t, h_t, grad_t = candidate.unbind(0), states.unbind(0), grad_states.unbind(0)
        u_t, g_t = (None, None) if plain else (update.unbind(0), gate.unbind(0))
        rec_n = recurrent[..., 2 * hidden:].unbind(0)
        d_g = d_gate.unbind(0) if d_gate is not None else None
        w_rz, w_n = w_hh[:2 * hidden], w_hh[2 * hidden:]
        zero = states.new_zeros(rows, hidden)
        dh = zero
        for t in range(steps - 1, -1, -1):
            dh = dh + grad_t[t]
            r, z, n, h_prev = r_t[t], z_t[t], n_t[t], h_t[t - 1] if t > 0 else zero
            dn = dh * (1.0 - z if plain else u_t[t])
            d_pre_n = torch.mul(dn, 1.0 - n * n, out=d_n[t])
            torch.mul(d_pre_n, r, out=d_rn[t])
            torch.mul(d_pre_n * rec_n[t], r - r * r, out=d_r[t])
            du = dh * (n - h_prev)
            if not agru:  # u' = gate (1 - z): dz = -du * gate
                torch.mul(du if plain else du * g_t[t], z * z - z, out=d_z[t])
            if d_g is not None:
                torch.sum(du if agru else du - du * z, dim=-1, keepdim=True, out=d_g[t])
            # through (1 - u') h_{t-1} and W_hh h_{t-1}
            dh = torch.addmm(torch.addmm(dh - dn, d_rz[t], w_rz), d_rn[t], w_n)
        d_w = d_b = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            previous = F.pad(states[:-1], (0, 0, 0, 0, 1, 0)).view(-1, hidden)  # h_{t-1}, zeros first
            rz, n = d_gi[..., :2 * hidden].reshape(-1, 2 * hidden), d_rec_n.view(-1, hidden)
            d_w = torch.cat([rz.t().mm(previous), n.t().mm(previous)])
            d_b = torch.cat([rz.sum(0), n.sum(0)])
        return d_gi, d_gate, d_w, d_b, None


def auxiliary_loss(interests: Tensor, keys: Tensor, negatives: Tensor, mask: Tensor) -> Tensor:
    """DIEN's auxiliary loss: interest h_t should predict the next behaviour e_{t+1} over a sampled negative.

    `-mean over valid t of [log sigmoid(h_t . e_{t+1}) + log(1 - sigmoid(h_t . e_neg_{t+1}))]`, valid
    where position t + 1 is a behaviour (histories of length 0 or 1 contribute nothing; a batch with no
    valid pair gives 0, not NaN). interests [B, T, H], keys and negatives [B, T, D] with H = D, mask
    bool [B, T]. Returns a scalar.
    """
    h, valid = interests[:, :-1], mask[:, 1:].to(interests.dtype)
    positive = (h * keys[:, 1:]).sum(-1)  # [B, T - 1]
    negative = (h * negatives[:, 1:]).sum(-1)
    loss = F.softplus(-positive) + F.softplus(negative)  # -log sigmoid(p) - log(1 - sigmoid(n)), stable
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- DSIN


class BiasEncoding(nn.Module):
    """DSIN's bias encoding `BE[k, t, c] = w_sess[k] + w_pos[t] + w_unit[c]`, added to every behaviour."""

    def __init__(self, sessions: int, length: int, dim: int) -> None:
        super().__init__()
        self.session = nn.Parameter(torch.empty(sessions))
        self.position = nn.Parameter(torch.empty(length))
        self.unit = nn.Parameter(torch.empty(dim))
        for w in (self.session, self.position, self.unit):
            nn.init.normal_(w, std=1e-2)  # small: the embeddings (Glorot) are about 0.05

    def forward(self, x: Tensor) -> Tensor:
        """x [B, S, L, D] with S <= sessions, L <= length -> [B, S, L, D]."""
        n_sess, length = x.shape[1], x.shape[2]
        if n_sess > self.session.shape[0] or length > self.position.shape[0]:
            raise ValueError(f"sessions of shape [{n_sess}, {length}] exceed the bias encoding's "
                             f"[{self.session.shape[0]}, {self.position.shape[0]}] (max_sessions, max_len)")
        return x + self.session[:n_sess, None, None] + self.position[:length, None] + self.unit


class SessionInterestExtractor(nn.Module):
    """DSIN's session interest extractor: one Transformer encoder layer inside each session, then its mean.

    Multi-head self-attention (weights shared by all sessions; padded keys masked) + residual +
    LayerNorm, a position-wise feed-forward + residual + LayerNorm, then the average over the session's
    valid positions. Only non-empty sessions are computed, and only up to the batch's longest session;
    empty sessions get zero vectors.
    """

    def __init__(self, dim: int, heads: int = 2, ffn_hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"behaviour width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        hidden = ffn_hidden or 4 * dim
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, S, L, D], mask bool [B, S, L] -> (sessions [B, S, D], session mask bool [B, S])."""
        n_rows, n_sess, length, dim = x.shape
        session_mask = mask.any(-1)
        rows = session_mask.reshape(-1).nonzero().squeeze(1)  # non-empty sessions of the batch
        steps = int(mask.any(0).any(0).nonzero().max()) + 1 if rows.numel() else 0
        flat_x, flat_mask = x.reshape(-1, length, dim)[rows, :steps], mask.reshape(-1, length)[rows, :steps]
        encoded = self.encode(flat_x, flat_mask)  # [N, steps, D]
        weight = flat_mask.to(encoded.dtype).unsqueeze(-1)
        pooled = (encoded * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # [N, D]
        out = x.new_zeros(n_rows * n_sess, dim).index_copy(0, rows, pooled)
        return out.view(n_rows, n_sess, dim), session_mask

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """One post-norm Transformer encoder layer: x [N, L, D], mask bool [N, L] (>= 1 valid) -> [N, L, D]."""
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [N, h, L, d]
        x = self.norm1(x + self.dropout(self.out(attended.transpose(1, 2).reshape(n, length, dim))))
        return self.norm2(x + self.dropout(self.ffn(x)))


class SessionInteraction(nn.Module):
    """DSIN's session interest interacting layer: a Bi-LSTM across the valid sessions of each row.

    Each row's valid sessions are moved to the front (order kept) and packed, so neither direction sees
    an empty session; the outputs (forward and backward states side by side, D/2 each) go back to the
    sessions' places, zero on empty sessions. Rows with no session get zeros, not NaN.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"behaviour width {dim} must be even (two LSTM directions of width D / 2)")
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, sessions: Tensor, session_mask: Tensor) -> Tensor:
        """sessions [B, S, D], session_mask bool [B, S] -> [B, S, D]."""
        n_sess = sessions.shape[1]
        order = torch.argsort((~session_mask).to(torch.int8), dim=1, stable=True)  # valid sessions first
        index = order.unsqueeze(-1).expand_as(sessions)
        counts = session_mask.sum(1).clamp_min(1).cpu()  # an empty row runs over one zero session (masked)
        packed = nn.utils.rnn.pack_padded_sequence(sessions.gather(1, index), counts, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=n_sess)
        restored = out.gather(1, torch.argsort(order, dim=1).unsqueeze(-1).expand_as(out))
        return restored * session_mask.unsqueeze(-1).to(out.dtype)


def keep_lookups_eager(model: nn.Module) -> nn.Module:
    """Keep every FeatureEmbedding's lookups out of torch.compile graphs; call it before compiling `model`.

    Inductor lowers the embedding backward to a scatter-add that is slower on CPU than ATen's kernel
    (compiled DIN, item + category, 2 cores, batch 256, median step: ~32.6k samples/s with the lookups
    inside the graph, ~34.7k outside; ~29k eager). Applied per instance here rather than as a decorator
    on the methods: `torch.compiler.disable` imports torch._dynamo (2.2-2.8 s measured), which every
    pipeline process that imports the models would pay, and only the benchmark compiles.
    """
    for module in model.modules():
        if isinstance(module, FeatureEmbedding):
            module.embed_behaviours = torch.compiler.disable(module.embed_behaviours)
            module._lookup_features = torch.compiler.disable(module._lookup_features)
    return model
