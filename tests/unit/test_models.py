"""Unit tests of the model layer: feature map, layers, every model's common behaviour (small, seeded, CPU)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.metrics import auc
from recsys.models import MODELS, Base, FeatureMap, ModelOutput, build_model
from recsys.models.din import DIN
from recsys.models.layers import MLP, ActivationUnit, Dice, FeatureEmbedding

E, B, T = 4, 6, 7
S, L = 3, 4  # max_sessions, max_len of the session features
VOCAB = {"item": 40, "category": 9, "age": 5, "gender": 4, "occupation": 6, "hour": 26, "weekday": 9}


def map_dict(max_len: int = T, extended: bool = True) -> dict:
    """The pipeline's feature map shape (plus a numeric target feature); `extended` adds the negative
    histories (DIEN) and the session features (DSIN) of the contract."""
    cat = [("item_id", "item", "target"), ("category", "category", "target"), ("age", "age", "user"),
           ("gender", "gender", "user"), ("occupation", "occupation", "user"), ("hour", "hour", "context"),
           ("weekday", "weekday", "context")]
    features = [{"name": n, "kind": "categorical", "group": g, "role": r} for n, g, r in cat]
    features.append({"name": "price", "kind": "numeric", "group": None, "role": "target"})
    pairs = (("item_id", "item"), ("category", "category"))
    features += [{"name": f"{t}_history", "kind": "sequence", "group": g, "role": "history", "max_len": max_len,
                  "target": t} for t, g in pairs]
    if extended:
        features += [{"name": f"neg_{t}_history", "kind": "sequence", "group": g, "role": "negative_history",
                      "max_len": max_len, "positive": f"{t}_history"} for t, g in pairs]
        features += [{"name": f"session_{g}_ids", "kind": "session", "group": g, "role": "sessions", "max_len": L,
                      "target": t, "max_sessions": S} for t, g in pairs]
    return {"features": features, "vocab_sizes": dict(VOCAB), "label": "label", "length": "history_length"}


@pytest.fixture
def fmap() -> FeatureMap:
    return FeatureMap.from_dict(map_dict())


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two spinning threads slow these tiny ops ~50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(fmap: FeatureMap, batch: int = B, length: int = T, seed: int = 0,
               lengths: list[int] | None = None, sessions: tuple[int, int] = (S, L),
               session_counts: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Random ids per the map; histories (and their negatives) left-aligned with 0 padding after
    `history_length`; sessions [batch, *sessions], each row `session_counts` non-empty sessions first
    (random if None), each of 1.. sessions[1] behaviours."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(lengths) if lengths is not None else torch.randint(0, length + 1, (batch,), generator=g)
    valid = torch.arange(length).unsqueeze(0) < n.unsqueeze(1)
    n_sess, sess_len = sessions
    counts = (torch.tensor(session_counts) if session_counts is not None
              else torch.randint(0, n_sess + 1, (batch,), generator=g))
    per_session = torch.randint(1, sess_len + 1, (batch, n_sess), generator=g)
    in_session = torch.arange(sess_len).view(1, 1, -1) < per_session.unsqueeze(-1)
    session_valid = in_session & (torch.arange(n_sess).view(1, -1, 1) < counts.view(-1, 1, 1))
    out: dict[str, torch.Tensor] = {fmap.length: n, fmap.label: torch.randint(0, 2, (batch,), generator=g).float()}
    for f in fmap.features:
        if f.kind == "numeric":
            out[f.name] = torch.rand(batch, generator=g)
            continue
        high = fmap.vocab_sizes[str(f.group)]
        shape = {"sequence": (batch, length), "session": (batch, n_sess, sess_len)}.get(f.kind, (batch,))
        ids = torch.randint(1, high, shape, generator=g)
        mask = {"sequence": valid, "session": session_valid}.get(f.kind)
        out[f.name] = ids if mask is None else ids * mask
    return out


def pad_more(batch: dict[str, torch.Tensor], fmap: FeatureMap, extra: int, sessions: int = 0,
             session_len: int = 0) -> dict[str, torch.Tensor]:
    """More padding: `extra` positions after every sequence, empty sessions and positions after the sessions."""
    out = dict(batch)
    for f in fmap.sequences:
        out[f.name] = F.pad(batch[f.name], (0, extra))
    for f in fmap.sessions:
        out[f.name] = F.pad(batch[f.name], (0, session_len, 0, sessions))
    return out


# --------------------------------------------------------------------------- feature map


def test_feature_map_round_trip_and_layout(fmap: FeatureMap) -> None:
    assert FeatureMap.from_dict(fmap.to_dict()) == fmap
    assert fmap.to_dict() == map_dict()
    assert fmap.groups == ("item", "category", "age", "gender", "occupation", "hour", "weekday")
    assert [f.name for f in fmap.histories] == ["item_id_history", "category_history"]
    assert [f.name for f in fmap.sequences] == ["item_id_history", "category_history", "neg_item_id_history",
                                                "neg_category_history"]
    assert fmap.negative_of("category_history").name == "neg_category_history"
    assert [f.name for f in fmap.sessions] == ["session_item_ids", "session_category_ids"]
    assert fmap.inputs[-1] == "history_length"
    session = fmap.to_dict()["features"][-1]
    assert session == {"name": "session_category_ids", "kind": "session", "group": "category", "role": "sessions",
                       "max_len": L, "target": "category", "max_sessions": S}
    assert fmap.to_dict()["features"][-3]["positive"] == "category_history"


def test_feature_maps_without_the_new_kinds_stay_valid() -> None:
    plain = FeatureMap.from_dict(map_dict(extended=False))
    assert plain.to_dict() == map_dict(extended=False) and not plain.negatives and not plain.sessions
    assert all("positive" not in f and "max_sessions" not in f for f in plain.to_dict()["features"])


def _feature(raw: dict, name: str) -> dict:
    return next(f for f in raw["features"] if f["name"] == name)


MAP_ERRORS = {
    "target_group": lambda raw: _feature(raw, "category_history").update(target="item_id"),
    "missing_vocab": lambda raw: raw["vocab_sizes"].pop("hour"),
    "bad_kind": lambda raw: _feature(raw, "item_id").update(kind="embedding"),
    "history_not_sequence": lambda raw: _feature(raw, "age").update(role="history"),
    "negative_without_positive": lambda raw: _feature(raw, "neg_item_id_history").pop("positive"),
    "negative_of_unknown": lambda raw: _feature(raw, "neg_item_id_history").update(positive="nope"),
    "negative_other_group": lambda raw: _feature(raw, "neg_item_id_history").update(positive="category_history"),
    "negative_other_length": lambda raw: _feature(raw, "neg_item_id_history").update(max_len=T + 1),
    "negative_of_negative": lambda raw: _feature(raw, "neg_item_id_history").update(positive="neg_item_id_history"),
    "two_negatives_one_history": lambda raw: _feature(raw, "neg_category_history").update(
        positive="item_id_history", group="item"),
    "session_without_max_sessions": lambda raw: _feature(raw, "session_item_ids").pop("max_sessions"),
    "session_zero_max_len": lambda raw: _feature(raw, "session_item_ids").update(max_len=0),
    "session_without_target": lambda raw: _feature(raw, "session_item_ids").pop("target"),
    "session_target_group": lambda raw: _feature(raw, "session_item_ids").update(target="category"),
    "session_shapes_differ": lambda raw: _feature(raw, "session_item_ids").update(max_sessions=S + 1),
    "session_as_history": lambda raw: _feature(raw, "session_item_ids").update(role="history"),
    "sequence_as_sessions": lambda raw: _feature(raw, "item_id_history").update(role="sessions", max_sessions=S),
}


@pytest.mark.parametrize("change", sorted(MAP_ERRORS))
def test_feature_map_rejects_inconsistent_maps(change: str) -> None:
    raw = map_dict()
    MAP_ERRORS[change](raw)
    with pytest.raises(ValueError):
        FeatureMap.from_dict(raw)


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("activation", ["prelu", "dice", "sigmoid", "relu"])
def test_mlp_shapes(activation: str) -> None:
    mlp = MLP(10, (8, 5), activation, dropout=0.1, out_features=1)
    assert mlp(torch.randn(B, 10)).shape == (B, 1)
    assert mlp(torch.randn(B, T, 10), torch.ones(B, T, dtype=torch.bool)).shape == (B, T, 1)
    assert MLP(10, (8, 5), activation)(torch.randn(B, 10)).shape == (B, 5)


def test_small_init_shrinks_embeddings_keeps_padding_zero_and_zeroes_biases(fmap: FeatureMap) -> None:
    torch.manual_seed(0)
    model = build_model("dien", fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8), init="small")
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert tables and all(t.weight[1:].abs().max() < 1e-3 and not t.weight[0].any() for t in tables)
    assert not model.evolution.cell.bias_hh.any() and not model.mlp.out.bias.any()
    glorot = build_model("dien", fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8))
    assert glorot.embedding.table("item").weight[1:].abs().max() > 1e-2
    with pytest.raises(ValueError, match="unknown init"):
        build_model("din", fmap, init="he")


def test_mlp_batch_norm_uses_batch_statistics_in_train_and_running_ones_in_eval() -> None:
    torch.manual_seed(0)
    mlp = MLP(10, (8,), "prelu", out_features=1, batch_norm=True)
    x = torch.randn(B, 10)
    mlp.train()
    first = mlp(x)[:1]
    assert not torch.allclose(mlp(torch.cat([x[:1], 5 * x[1:]]))[:1], first)  # the batch moves row 0
    mlp.eval()
    alone = mlp(x[:1])
    assert torch.allclose(mlp(torch.cat([x[:1], 5 * x[1:]]))[:1], alone)  # eval: rows are independent
    assert torch.allclose(mlp(x.view(2, B // 2, 10)).view(B, 1), mlp(x), atol=1e-6)  # [B, T, F] as [B*T, F]


def test_feature_embedding_layout(fmap: FeatureMap) -> None:
    emb = FeatureEmbedding(fmap, E)
    batch = make_batch(fmap, lengths=[0, 1, 3, 7, 7, 2])
    e = emb(batch)
    assert e.query.shape == (B, 2 * E) and e.keys.shape == (B, T, 2 * E)
    assert e.dense.shape == (B, 5 * E + 1) == (B, emb.dense_dim)  # 5 user/context embeddings + price
    assert e.mask.dtype == torch.bool and e.mask.sum(1).tolist() == [0, 1, 3, 7, 7, 2]
    assert torch.all(e.keys[~e.mask] == 0)  # padding rows are zero
    assert torch.equal(e.dense[:, -1], batch["price"])
    item_table = emb.table("item").weight
    assert torch.equal(e.query[:, :E], item_table[batch["item_id"]])  # target and history share the table
    assert torch.equal(e.keys[:, :, :E], item_table[batch["item_id_history"]])
    bound = math.sqrt(6.0 / (VOCAB["item"] + E))  # Glorot uniform
    assert item_table.abs().max() <= bound and torch.all(item_table[0] == 0)


@pytest.mark.parametrize("kind", ["mlp", "dot", "bilinear"])
@pytest.mark.parametrize("softmax", [False, True])
def test_activation_unit_shapes_and_padding(kind: str, softmax: bool) -> None:
    torch.manual_seed(0)
    unit = ActivationUnit(8, (6, 4), kind=kind, softmax=softmax)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor([0, 1, 3, 7, 7, 2]).unsqueeze(1)
    w = unit(torch.randn(B, 8), torch.randn(B, T, 8), mask)
    assert w.shape == (B, T) and torch.isfinite(w).all()
    assert torch.all(w[~mask] == 0)
    if softmax:
        assert torch.allclose(w.sum(1)[1:], torch.ones(B - 1)) and w[0].sum() == 0


def test_activation_unit_equals_the_papers_mlp_on_the_concatenation() -> None:
    torch.manual_seed(0)
    unit = ActivationUnit(8, (6, 4), activation="prelu")
    q, k = torch.randn(B, 8), torch.randn(B, T, 8)
    mask = torch.ones(B, T, dtype=torch.bool)
    qe = q.unsqueeze(1).expand_as(k)
    hidden = unit.activation(unit.interaction(torch.cat([qe, k, qe - k, qe * k], -1)))
    expected = unit.head(hidden).squeeze(-1)
    assert torch.allclose(unit(q, k, mask), expected, atol=1e-5)


def test_dice_batch_statistics_in_train_running_statistics_in_eval() -> None:
    torch.manual_seed(0)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.fill_(0.3)
    x = torch.randn(16, 3) * 2.0 + 5.0  # far from the initial running stats (0, 1)
    train_out = dice(x)
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
    assert torch.allclose(train_out, p * x + (1 - p) * 0.3 * x, atol=1e-5)
    assert torch.allclose(dice.running_mean, 0.1 * x.mean(0), atol=1e-5)  # momentum 0.1 from 0
    dice.eval()
    eval_out = dice(x)
    assert not torch.allclose(eval_out, train_out, atol=1e-3)
    assert torch.allclose(dice(x[:1]), eval_out[:1])  # a row's eval output ignores the rest of the batch
    dice.train()
    assert not torch.allclose(dice(torch.cat([x[:1], -x[1:]]))[:1], train_out[:1], atol=1e-3)


def test_dice_masked_statistics_ignore_padding() -> None:
    torch.manual_seed(0)
    dice = Dice(4)
    x = torch.randn(B, T, 4)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor([1, 2, 3, 4, 5, 6]).unsqueeze(1)
    noisy = torch.where(mask.unsqueeze(-1), x, torch.randn(B, T, 4) * 100)
    assert dice(x, mask).shape == (B, T, 4)
    assert torch.allclose(dice(x, mask)[mask], dice(noisy, mask)[mask], atol=1e-6)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_output_shapes(name: str, fmap: FeatureMap) -> None:
    model = build_model(name, fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8))
    out = model(make_batch(fmap))
    assert isinstance(out, ModelOutput) and out.logits.shape == (B,)
    assert (out.aux_loss is None) == (name != "dien")  # training mode: DIEN's auxiliary loss
    if out.aux_loss is not None:
        assert out.aux_loss.shape == () and out.aux_loss > 0
    assert (out.attention is None) == (name in ("base", "dsin"))  # DSIN attends sessions, not positions
    if out.attention is not None:
        assert out.attention.shape == (B, T)
    assert model.regularization(make_batch(fmap)).shape == ()
    model.eval()
    assert model(make_batch(fmap)).aux_loss is None  # the auxiliary loss is a training signal only


MODEL_VARIANTS = [("base", {}), ("din", {}), ("din", {"activation": "dice"}),
                  ("din", {"softmax": True}), ("din", {"attention": "dot"}), ("din", {"attention": "bilinear"}),
                  ("dien", {}), ("dien", {"evolution": "agru"}), ("dien", {"evolution": "aigru"}),
                  ("dien", {"attention": "bilinear", "activation": "dice"}), ("dsin", {}),
                  ("dsin", {"activation": "dice", "heads": 4}), ("dsin", {"attention": "dot", "softmax": False}),
                  ("din", {"batch_norm": True, "attention_activation": "dice"}), ("base", {"batch_norm": True}),
                  ("dien", {"batch_norm": True, "sum_pooling": False, "aux_loss": False, "init": "small"}),
                  ("dsin", {"batch_norm": True, "attention_activation": "dice"}),
                  ("din", {"batch_norm": True, "attention_activation": "sigmoid"}),
                  ("dien", {"attention_activation": "sigmoid"})]


@pytest.mark.parametrize(("name", "options"), MODEL_VARIANTS)
def test_extra_padding_does_not_change_outputs(name: str, options: dict, fmap: FeatureMap) -> None:
    torch.manual_seed(0)
    model = build_model(name, fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8), **options)
    batch = make_batch(fmap, lengths=[0, 1, 3, 7, 7, 2], sessions=(S - 1, L - 1), session_counts=[0, 1, 2, 2, 1, 0])
    model.train()
    model(batch)  # moves Dice's running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        short, long = model(batch), model(pad_more(batch, fmap, 5, sessions=1, session_len=1))
    assert torch.isfinite(short.logits).all()
    assert torch.allclose(short.logits, long.logits, atol=1e-5)
    if short.attention is not None:
        assert long.attention.shape == (B, T + 5)
        assert torch.allclose(short.attention, long.attention[:, :T], atol=1e-6)
        assert torch.all(long.attention[:, T:] == 0)


@pytest.mark.parametrize("options", [{}, {"softmax": True}, {"activation": "dice"}])
def test_din_attention_is_zero_on_padding(options: dict, fmap: FeatureMap) -> None:
    model = DIN(fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8), **options)
    lengths = [0, 1, 3, 7, 7, 2]
    out = model(make_batch(fmap, lengths=lengths))
    valid = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    assert torch.all(out.attention[~valid] == 0) and torch.all(out.attention[0] == 0)
    assert torch.isfinite(out.logits).all()
    assert (out.attention[valid] != 0).all()


@pytest.mark.parametrize(("name", "options"), MODEL_VARIANTS)
def test_every_parameter_gets_a_gradient(name: str, options: dict, fmap: FeatureMap) -> None:
    torch.manual_seed(0)
    model = build_model(name, fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8), **options)
    batch = make_batch(fmap, batch=32, lengths=[(i % T) + 1 for i in range(32)])
    out = model(batch)
    loss = F.binary_cross_entropy_with_logits(out.logits, batch["label"]) + 1e-3 * model.regularization(batch)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    for f in fmap.of(kind="categorical"):
        grad = model.embedding.table(str(f.group)).weight.grad
        assert torch.all(grad[0] == 0)  # the padding row never learns
        assert torch.all(grad[batch[f.name]].abs().sum(-1) > 0), f.name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_falls_on_a_tiny_learnable_set(name: str, fmap: FeatureMap) -> None:
    torch.manual_seed(0)
    batch = make_batch(fmap, batch=64, seed=3)
    batch["label"] = (batch["item_id"] % 2).float()  # learnable from the target alone
    model = build_model(name, fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(model(batch).logits, batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_models_work_for_other_feature_maps() -> None:
    raw = map_dict()
    raw["features"] = [f for f in raw["features"] if f["role"] != "user" and f["kind"] != "numeric"]
    raw["features"].insert(2, {"name": "device", "kind": "categorical", "group": "device", "role": "context"})
    raw["vocab_sizes"] = {**{g: n for g, n in VOCAB.items() if g not in ("age", "gender", "occupation")},
                          "device": 5}
    fmap = FeatureMap.from_dict(raw)
    for name in MODELS:
        model = build_model(name, raw, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8))
        assert model.embedding.dense_dim == 3 * E  # hour, weekday, device
        assert model(make_batch(fmap)).logits.shape == (B,)
    only_history = {"features": [f for f in raw["features"] if f["role"] in ("target", "history")],
                    "vocab_sizes": {"item": 40, "category": 9}}
    model = build_model("din", only_history, embed_dim=E)
    assert model(make_batch(FeatureMap.from_dict(only_history))).logits.shape == (B,)


def test_build_model_rejects_unknown_names_and_options(fmap: FeatureMap) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("dcn", fmap)
    with pytest.raises(TypeError):
        build_model("base", fmap, attention="dot")
    with pytest.raises(ValueError, match="attention"):
        build_model("din", fmap, attention="cosine")
    with pytest.raises(ValueError, match="activation"):
        build_model("din", fmap, activation="swish")
    assert isinstance(build_model("base", fmap), Base)


def test_state_dict_round_trip_rebuilds_the_same_model(fmap: FeatureMap) -> None:
    torch.manual_seed(0)
    model = build_model("din", fmap, embed_dim=E, activation="dice")
    batch = make_batch(fmap)
    model(batch)  # update Dice running stats so they are part of what must round-trip
    model.embedding.set_frequencies({"item": np.arange(VOCAB["item"])})
    state = copy.deepcopy(model.state_dict())
    assert not any(k.startswith("embedding.frequency") for k in state)  # training-only, not saved
    torch.manual_seed(1)
    rebuilt = build_model("din", fmap.to_dict(), embed_dim=E, activation="dice")
    rebuilt.load_state_dict(state)
    model.eval()
    rebuilt.eval()
    assert torch.equal(model(batch).logits, rebuilt(batch).logits)


# --------------------------------------------------------------------------- regularization


# which batch keys each model embeds (and so penalises): DIN reads no negatives or sessions, DIEN the
# negatives (auxiliary loss) too, DSIN the sessions instead of the flat histories
READS = {"din": ("categorical", "history"), "dien": ("categorical", "history", "negative_history"),
         "dsin": ("categorical", "sessions")}


@pytest.mark.parametrize("name", sorted(READS))
def test_mini_batch_aware_l2_penalises_only_touched_rows(name: str, fmap: FeatureMap) -> None:
    model = build_model(name, fmap, embed_dim=E)
    batch = make_batch(fmap, lengths=[0, 1, 3, 7, 7, 2])
    read = [f.name for f in fmap.features if f.kind in READS[name] or f.role in READS[name]]
    reg = model.regularization(batch)
    expected = 0.0
    for group in fmap.groups:
        ids = torch.cat([batch[f.name].reshape(-1) for f in fmap.features if f.group == group and f.name in read])
        rows, counts = torch.unique(ids[ids > 0], return_counts=True)
        weight = model.embedding.table(group).weight
        expected += (weight[rows].square().sum(1) / counts).sum()
    assert torch.allclose(reg, expected)
    reg.backward()
    item_grad = model.embedding.table("item").weight.grad
    touched = torch.zeros(VOCAB["item"], dtype=torch.bool)
    touched[torch.cat([batch[n].reshape(-1) for n in read if fmap.get(n).group == "item"])] = True
    touched[0] = False
    assert torch.all(item_grad[touched].abs().sum(1) > 0) and torch.all(item_grad[~touched] == 0)
    only_unread = torch.zeros(VOCAB["item"], dtype=torch.bool)  # rows only features the model ignores touch
    only_unread[torch.cat([batch[f.name].reshape(-1) for f in fmap.features if f.group == "item"])] = True
    only_unread &= ~touched
    only_unread[0] = False
    assert only_unread.any()  # so the line above did check that they are not penalised


def test_mini_batch_aware_l2_with_data_frequencies(fmap: FeatureMap) -> None:
    model = build_model("base", fmap, embed_dim=E)
    batch = make_batch(fmap)
    frequencies = {g: np.full(n, 10.0) for g, n in VOCAB.items()}
    in_batch = model.regularization(batch)
    model.embedding.set_frequencies(frequencies)
    expected = 0.0
    for group in fmap.groups:
        ids = torch.cat([batch[f.name].reshape(-1) for f in fmap.features
                         if f.group == group and f.role not in ("negative_history", "sessions")])
        rows = torch.unique(ids[ids > 0])
        expected += model.embedding.table(group).weight[rows].square().sum() / 10.0
    assert torch.allclose(model.regularization(batch), expected)
    assert not torch.allclose(in_batch, expected)
    with pytest.raises(ValueError, match="shape"):
        model.embedding.set_frequencies({"item": np.ones(3)})


# --------------------------------------------------------------------------- attention matters


def sequential_data(n: int, seed: int, n_cats: int = 50, per_cat: int = 6, length: int = 20) -> dict:
    """Label = the target's category occurs in the history; half the targets copy a history item's category.

    Only a model that compares the target with each history item can solve it; a sum over the history
    hides which categories it contains.
    """
    rng = np.random.default_rng(seed)
    item_cat = np.arange(n_cats * per_cat) % n_cats + 2  # ids 0 / 1 are padding / unknown
    lengths = rng.integers(3, length + 1, n)
    valid = np.arange(length)[None] < lengths[:, None]
    hist = rng.integers(0, n_cats * per_cat, (n, length))
    hist_cat = np.where(valid, item_cat[hist], 0)
    copied = hist_cat[np.arange(n), rng.integers(0, lengths)]
    cat = np.where(rng.random(n) < 0.5, copied, rng.integers(0, n_cats, n) + 2)
    target = cat - 2 + n_cats * rng.integers(0, per_cat, n)
    batch = {"item_id": target + 2, "category": cat, "item_id_history": np.where(valid, hist + 2, 0),
             "category_history": hist_cat, "history_length": lengths, "age": rng.integers(2, 5, n),
             "hour": rng.integers(2, 26, n), "label": (hist_cat == cat[:, None]).any(1).astype(np.float32)}
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def test_din_beats_base_when_attention_matters() -> None:
    raw = map_dict(max_len=20)
    raw["features"] = [f for f in raw["features"] if f["name"] in
                       ("item_id", "category", "age", "hour", "item_id_history", "category_history")]
    raw["vocab_sizes"] = {"item": 302, "category": 52, "age": 5, "hour": 26}
    fmap = FeatureMap.from_dict(raw)
    train, test = sequential_data(4000, seed=1), sequential_data(2000, seed=2)
    scores = {}
    for name in ("base", "din"):
        torch.manual_seed(0)
        model = build_model(name, fmap, embed_dim=8, attention_hidden=(32, 16), mlp_hidden=(64, 32))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(5):
            model.train()
            for rows in torch.randperm(4000, generator=order).split(128):
                batch = {k: v[rows] for k, v in train.items()}
                loss = F.binary_cross_entropy_with_logits(model(batch).logits, batch["label"])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            scores[name] = auc(test["label"].numpy(), model(test).logits.numpy())
    assert scores["din"] > 0.85 and scores["din"] > scores["base"] + 0.15, scores


def test_lookups_stay_out_of_compiled_graphs_and_the_pipeline_does_not_import_dynamo(fmap: FeatureMap) -> None:
    """keep_lookups_eager: the traced graphs hold no embedding op; importing the models loads no dynamo."""
    import subprocess
    import sys

    from recsys.models.layers import keep_lookups_eager

    probe = "import sys, recsys.models, recsys.score; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    model = build_model("din", fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8)).eval()
    batch = make_batch(fmap)
    traced: list[str] = []

    def recording(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        traced.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    expected = model(batch).logits
    got = torch.compile(keep_lookups_eager(model), backend=recording)(batch).logits
    torch.testing.assert_close(got, expected)
    assert traced and not any("embedding" in t for t in traced), traced
    torch._dynamo.reset()
