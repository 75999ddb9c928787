"""Unit tests of the model layer: feature map, layers, Base and DIN (small, seeded, CPU)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.metrics import auc
from recsys.models import MODELS, Base, FeatureMap, ModelOutput, build_model
from recsys.models.din import DIN
from recsys.models.layers import MLP, ActivationUnit, Dice, FeatureEmbedding

E, B, T = 4, 6, 7
VOCAB = {"item": 40, "category": 9, "age": 5, "gender": 4, "occupation": 6, "hour": 26, "weekday": 9}


def map_dict(max_len: int = T) -> dict:
    """The pipeline's feature map shape (plus a numeric target feature)."""
    cat = [("item_id", "item", "target"), ("category", "category", "target"), ("age", "age", "user"),
           ("gender", "gender", "user"), ("occupation", "occupation", "user"), ("hour", "hour", "context"),
           ("weekday", "weekday", "context")]
    features = [{"name": n, "kind": "categorical", "group": g, "role": r} for n, g, r in cat]
    features.append({"name": "price", "kind": "numeric", "group": None, "role": "target"})
    features += [{"name": f"{t}_history", "kind": "sequence", "group": g, "role": "history", "max_len": max_len,
                  "target": t} for t, g in (("item_id", "item"), ("category", "category"))]
    return {"features": features, "vocab_sizes": dict(VOCAB), "label": "label", "length": "history_length"}


@pytest.fixture
def fmap() -> FeatureMap:
    return FeatureMap.from_dict(map_dict())


def make_batch(fmap: FeatureMap, batch: int = B, length: int = T, seed: int = 0,
               lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Random ids per the map; histories left-aligned with 0 padding after `history_length`."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(lengths) if lengths is not None else torch.randint(0, length + 1, (batch,), generator=g)
    valid = torch.arange(length).unsqueeze(0) < n.unsqueeze(1)
    out: dict[str, torch.Tensor] = {fmap.length: n, fmap.label: torch.randint(0, 2, (batch,), generator=g).float()}
    for f in fmap.features:
        if f.kind == "numeric":
            out[f.name] = torch.rand(batch, generator=g)
            continue
        high = fmap.vocab_sizes[str(f.group)]
        shape = (batch, length) if f.kind == "sequence" else (batch,)
        ids = torch.randint(1, high, shape, generator=g)
        out[f.name] = ids * valid if f.kind == "sequence" else ids
    return out


def pad_more(batch: dict[str, torch.Tensor], fmap: FeatureMap, extra: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for f in fmap.sequences:
        out[f.name] = F.pad(batch[f.name], (0, extra))
    return out


# --------------------------------------------------------------------------- feature map


def test_feature_map_round_trip_and_layout(fmap: FeatureMap) -> None:
    assert FeatureMap.from_dict(fmap.to_dict()) == fmap
    assert fmap.to_dict() == map_dict()
    assert fmap.groups == ("item", "category", "age", "gender", "occupation", "hour", "weekday")
    assert [f.name for f in fmap.sequences] == ["item_id_history", "category_history"]
    assert fmap.inputs[-1] == "history_length"


@pytest.mark.parametrize("change", ["target_group", "missing_vocab", "bad_kind", "history_not_sequence"])
def test_feature_map_rejects_inconsistent_maps(change: str) -> None:
    raw = map_dict()
    if change == "target_group":
        raw["features"][-1]["target"] = "item_id"  # category history against the item target
    elif change == "missing_vocab":
        del raw["vocab_sizes"]["hour"]
    elif change == "bad_kind":
        raw["features"][0]["kind"] = "embedding"
    else:
        raw["features"][2]["role"] = "history"
    with pytest.raises(ValueError):
        FeatureMap.from_dict(raw)


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_mlp_shapes(activation: str) -> None:
    mlp = MLP(10, (8, 5), activation, dropout=0.1, out_features=1)
    assert mlp(torch.randn(B, 10)).shape == (B, 1)
    assert mlp(torch.randn(B, T, 10), torch.ones(B, T, dtype=torch.bool)).shape == (B, T, 1)
    assert MLP(10, (8, 5), activation)(torch.randn(B, 10)).shape == (B, 5)


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
    assert isinstance(out, ModelOutput) and out.logits.shape == (B,) and out.aux_loss is None
    assert (out.attention is None) == (name == "base")
    if out.attention is not None:
        assert out.attention.shape == (B, T)
    assert model.regularization(make_batch(fmap)).shape == ()


MODEL_VARIANTS = [("base", {}), ("din", {}), ("din", {"activation": "dice"}),
                  ("din", {"softmax": True}), ("din", {"attention": "dot"}), ("din", {"attention": "bilinear"})]


@pytest.mark.parametrize(("name", "options"), MODEL_VARIANTS)
def test_extra_padding_does_not_change_outputs(name: str, options: dict, fmap: FeatureMap) -> None:
    torch.manual_seed(0)
    model = build_model(name, fmap, embed_dim=E, attention_hidden=(8, 4), mlp_hidden=(16, 8), **options)
    batch = make_batch(fmap, lengths=[0, 1, 3, 7, 7, 2])
    model.train()
    model(batch)  # moves Dice's running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        short, long = model(batch), model(pad_more(batch, fmap, 5))
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


def test_mini_batch_aware_l2_penalises_only_touched_rows(fmap: FeatureMap) -> None:
    model = build_model("din", fmap, embed_dim=E)
    batch = make_batch(fmap, lengths=[0, 1, 3, 7, 7, 2])
    reg = model.regularization(batch)
    expected = 0.0
    for group in fmap.groups:
        ids = torch.cat([batch[f.name].reshape(-1) for f in fmap.features if f.group == group])
        rows, counts = torch.unique(ids[ids > 0], return_counts=True)
        weight = model.embedding.table(group).weight
        expected += (weight[rows].square().sum(1) / counts).sum()
    assert torch.allclose(reg, expected)
    reg.backward()
    item_grad = model.embedding.table("item").weight.grad
    touched = torch.zeros(VOCAB["item"], dtype=torch.bool)
    touched[torch.cat([batch["item_id"], batch["item_id_history"].reshape(-1)])] = True
    touched[0] = False
    assert torch.all(item_grad[touched].abs().sum(1) > 0) and torch.all(item_grad[~touched] == 0)


def test_mini_batch_aware_l2_with_data_frequencies(fmap: FeatureMap) -> None:
    model = build_model("base", fmap, embed_dim=E)
    batch = make_batch(fmap)
    frequencies = {g: np.full(n, 10.0) for g, n in VOCAB.items()}
    in_batch = model.regularization(batch)
    model.embedding.set_frequencies(frequencies)
    expected = 0.0
    for group in fmap.groups:
        ids = torch.cat([batch[f.name].reshape(-1) for f in fmap.features if f.group == group])
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
