"""Training lifecycle: checkpoints and resume after a crash, early stopping, MLflow artifacts, and the
promotion gate with several enabled models (the best challenger of ds competes; a broken one never wins).

Uses the tiny favourite-category warehouse of test_train_promote_score (80 users, 3 days).
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from feature_store.retrieval import Frame
from recsys import registry
from recsys import train as train_module
from recsys.config import Config, load_config
from recsys.models import FeatureMap, build_model
from recsys.promote import best_challenger, promote
from recsys.train import (
    FitState,
    _loss,
    checkpoint_path,
    evaluate_frame,
    fit_epoch,
    group_counts,
    load_checkpoint,
    model_inputs,
    plot_attention,
    save_checkpoint,
    to_tensors,
    train,
    train_all,
)
from recsys.warehouse import connect
from tests.unit.test_models import make_batch, map_dict
from tests.unit.test_train_promote_score import DAYS, OVERRIDES, build_marts, shuffle_training_labels

DS = DAYS[-1]
FAST = {**OVERRIDES, "train.epochs": 2, "train.patience": 5}


def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides={**FAST, **overrides})
    con = connect(cfg, read_only=False)
    try:
        build_marts(con)
    finally:
        con.close()
    return cfg


def _weights(cfg: Config, version: str) -> dict[str, torch.Tensor]:
    return registry.load_version(cfg, version).model.state_dict()


def _metric_steps(cfg: Config, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in registry.configure(cfg).get_metric_history(run_id, key))


# --------------------------------------------------------------------------- pure pieces


def test_early_stopping_state_tracks_the_best_gauc() -> None:
    model = torch.nn.Linear(2, 1)
    state = FitState()
    improved = []
    for value in (0.60, 0.70, 0.65, float("nan"), 0.72):
        with torch.no_grad():
            model.weight.fill_(value)
        improved.append(state.update({"val_gauc": value}, model))
        if state.should_stop(patience=2):
            break
    assert improved == [True, True, False, False]  # NaN is never an improvement
    assert state.epoch == 4 and state.best_epoch == 2 and state.best_gauc == 0.70
    assert torch.allclose(state.best_state["weight"], torch.full((1, 2), 0.70))


def test_best_challenger_prefers_higher_metric_then_newer_version_and_never_nan() -> None:
    assert best_challenger({"3": 0.7, "4": 0.8, "5": float("nan")}) == "4"
    assert best_challenger({"3": 0.8, "4": 0.8}) == "4"
    assert best_challenger({"3": float("nan"), "4": 0.1}) == "4"


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=generator)
    state = FitState()
    state.update({"val_gauc": 0.5, "train_loss": 0.7}, model)
    state.run_id = "abc"
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, model, optimizer, generator, state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind
    expected_next = torch.randperm(10, generator=generator)

    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or original(*a, **k))
    fresh = torch.nn.Linear(3, 1)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh_gen = torch.Generator().manual_seed(99)
    loaded = load_checkpoint(path, fresh, fresh_opt, fresh_gen, torch.device("cpu"))
    assert calls == [True]
    assert loaded is not None and loaded.epoch == 1 and loaded.run_id == "abc" and loaded.history == state.history
    assert torch.equal(fresh.weight, model.weight) and fresh_opt.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.randperm(10, generator=fresh_gen), expected_next)
    assert load_checkpoint(tmp_path / "missing.pt", fresh, fresh_opt, fresh_gen, torch.device("cpu")) is None


# --------------------------------------------------------------------------- train stage


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight_cfg = _home(tmp_path / "straight", monkeypatch)
    straight = train(straight_cfg, DS)
    assert straight.resumed_from_epoch == 0 and straight.epochs_run == 2
    reference = _weights(straight_cfg, straight.model_version)

    cfg = _home(tmp_path / "crash", monkeypatch)
    real_fit_epoch = train_module.fit_epoch

    def crash_in_epoch_two(*args: object, **kwargs: object) -> float:
        if args[-1] == 2:
            raise RuntimeError("simulated crash")
        return real_fit_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit_epoch", crash_in_epoch_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, DS)
    assert registry.latest_version(cfg) is None
    fingerprint = train_module.training_fingerprint(cfg, "din", DS)
    ckpt = checkpoint_path(cfg, "din", DS, fingerprint)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1
    assert registry.configure(cfg).get_run(saved["run_id"]).info.status == "FAILED"

    monkeypatch.setattr(train_module, "fit_epoch", real_fit_epoch)
    resumed = train(cfg, DS)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2 and resumed.run_id == saved["run_id"]
    weights = _weights(cfg, resumed.model_version)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    assert resumed.metrics == pytest.approx(straight.metrics)
    assert _metric_steps(cfg, resumed.run_id, "val_gauc") == [1, 2]  # each epoch logged once, in one run
    assert registry.configure(cfg).get_run(resumed.run_id).info.status == "FINISHED"
    assert not ckpt.parent.exists()  # removed once registered


def test_early_stopping_registers_the_best_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _home(tmp_path, monkeypatch, **{"train.epochs": 6, "train.patience": 2})
    gaucs, snapshots = iter([0.9, 0.8, 0.7, 0.95, 0.99, 0.99]), []
    real_evaluate = train_module.evaluate_frame

    def scripted(model: torch.nn.Module, *args: object) -> dict[str, float]:
        scores = real_evaluate(model, *args)
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {**scores, "gauc": next(gaucs)}

    monkeypatch.setattr(train_module, "evaluate_frame", scripted)
    result = train(cfg, DS)
    assert result.best_epoch == 1 and result.epochs_run == 3 and len(snapshots) == 3  # stopped after 2 worse
    assert result.metrics["val_gauc"] == pytest.approx(0.9)
    weights = _weights(cfg, result.model_version)
    assert all(torch.equal(weights[k], snapshots[0][k]) for k in weights)
    assert not all(torch.equal(weights[k], snapshots[-1][k]) for k in weights)
    metrics = registry.configure(cfg).get_run(result.run_id).data.metrics
    assert metrics["best_epoch"] == 1 and metrics["epochs_run"] == 3
    again = train(cfg, DS)  # same inputs: the registered version is reused and reports the best epoch
    assert again.reused and again.model_version == result.model_version and again.best_epoch == 1
    assert again.metrics["val_gauc"] == pytest.approx(0.9)


def test_run_logs_params_curves_artifacts_and_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _home(tmp_path, monkeypatch)
    results = train_all(cfg.with_overrides({"train.models": ["din", "base", "dien", "dsin"]}), DS)
    client = registry.configure(cfg)
    for name, result in results.items():
        run = client.get_run(result.run_id)
        assert client.get_experiment(run.info.experiment_id).name == f"recsys/{name}"
        assert run.data.params["train.patience"] == "5" and run.data.params["gauc_weighting"] == "impressions"
        for key in ("train_loss", "val_auc", "val_gauc", "val_logloss"):
            assert _metric_steps(cfg, result.run_id, key) == [1, 2]
        root = {f.path for f in client.list_artifacts(result.run_id)}
        plots = {f.path for f in client.list_artifacts(result.run_id, "plots")}
        assert "feature_map.json" in root and "plots/training_curve.png" in plots
        # DIN and DIEN attend per history position; Base and DSIN (session-level pools) do not
        assert ("plots/attention_heatmap.png" in plots) == (name in ("din", "dien"))
        assert result.metrics["val_gauc"] > 0.5, (name, result.metrics)  # better than chance after 2 epochs
        local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="plots",
                                                         dst_path=str(tmp_path / f"dl-{name}"),
                                                         tracking_uri=cfg.tracking_uri))
        assert (local / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        version = client.get_model_version(cfg.mlflow.registered_model, result.model_version)
        assert version.tags["model_name"] == name and version.tags["ds"] == DS
        assert {"git_sha", "dbt_manifest_sha", "train_fingerprint"} <= set(version.tags)
        model_info = mlflow.models.get_model_info(f"models:/{cfg.mlflow.registered_model}/{result.model_version}")
        assert model_info.signature is not None and "history_length" in model_info.signature.inputs.input_names()
    assert len({r.model_version for r in results.values()}) == 4


def test_best_challenger_of_several_models_competes_and_broken_one_never_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _home(tmp_path, monkeypatch, **{"train.models": ["din", "base"], "train.epochs": 3})
    trained = train_all(cfg, DS)
    first = promote(cfg, DS)
    versions = {r.model_version for r in trained.values()}
    assert set(first.candidates) == versions and first.decision == "first_champion"
    assert first.challenger_metric == max(first.candidates.values())  # ties go to the newer version
    assert first.challenger_version == best_challenger(first.candidates)

    shuffle_training_labels(cfg)  # a deliberately broken din: trained on permuted labels
    broken = train(cfg, DS, "din")
    second = promote(cfg, DS)
    assert broken.model_version in second.candidates and len(second.candidates) == 2
    assert second.challenger_version != broken.model_version
    assert second.candidates[broken.model_version] < second.challenger_metric - 0.1
    assert registry.champion_version(cfg) != broken.model_version
    con = connect(cfg, read_only=True)
    try:
        row = con.execute("SELECT challenger_version, champion_before, champion_after, challenger_value, "
                          "champion_value FROM marts.model_promotions WHERE ds = ?", [DS]).fetchall()
    finally:
        con.close()
    if second.challenger_version == first.challenger_version:
        # ds was decided before with the same best challenger: the rerun repeats that decision (idempotent by ds)
        assert row == [(second.challenger_version, None, second.challenger_version,
                        pytest.approx(second.challenger_metric), None)]
    else:  # the broken din replaced a winning din: the best challenger left (base) must beat ds's champion
        wins = second.challenger_metric > first.challenger_metric + cfg.promote.margin
        after = second.challenger_version if wins else first.challenger_version
        assert row == [(second.challenger_version, first.challenger_version, after,
                        pytest.approx(second.challenger_metric), pytest.approx(first.challenger_metric))]
    runs = mlflow.search_runs(experiment_names=["recsys/promotion"], output_format="list")
    logged = max(runs, key=lambda r: r.info.start_time).data.metrics
    assert logged[f"candidate_v{broken.model_version}_gauc"] == pytest.approx(second.candidates[broken.model_version])



# --------------------------------------------------------------------------- every model through the trainer


def _frame_of(fmap_dict: dict, rows: int = 64) -> Frame:
    """A labelled training frame with every input of the contract (negative histories, sessions) as numpy."""
    batch = make_batch(FeatureMap.from_dict(fmap_dict), batch=rows, seed=3)
    columns = {k: v.numpy() for k, v in batch.items()}
    users = (np.arange(rows) // 2) % 8
    columns["label"] = (np.arange(rows) % 2).astype(np.float32)  # both classes for every user
    return Frame(columns=columns, keys={"user_id": users, "item_id": columns["item_id"]})


@pytest.mark.parametrize("name", ["base", "din", "dien", "dsin"])
def test_trainer_feeds_every_model_deterministically(name: str, tmp_path: Path) -> None:
    fmap = map_dict()
    frame = _frame_of(fmap)
    tc = load_config(overrides={"train.batch_size": 16, "train.aux_loss_weight": 1.0}).train

    def one_epoch() -> tuple[float, torch.nn.Module]:
        torch.manual_seed(0)
        model = build_model(name, fmap, embed_dim=4, attention_hidden=(8,), mlp_hidden=(8,))
        model.embedding.set_frequencies(group_counts(frame, fmap))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        loss = fit_epoch(model, frame, optimizer, model_inputs(fmap), tc, torch.Generator().manual_seed(1),
                         torch.device("cpu"), 1)
        return loss, model

    (loss_a, model_a), (loss_b, model_b) = one_epoch(), one_epoch()
    assert math.isfinite(loss_a) and loss_a == loss_b
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(),
                                                  strict=True))
    scores = evaluate_frame(model_a, frame, fmap, torch.device("cpu"))
    assert 0.0 <= scores["gauc"] <= 1.0 and scores["gauc_users"] == 8
    heatmap = tmp_path / "attention.png"
    drawn = plot_attention(model_a, frame, fmap, torch.device("cpu"), heatmap)
    with torch.inference_mode():
        has_attention = model_a.eval()(to_tensors(frame.batch(np.arange(2)), torch.device("cpu"))).attention
    assert drawn == (has_attention is not None) == heatmap.exists()
    assert drawn or name in ("base", "dsin")  # DIN and DIEN attend per history position


def test_dien_auxiliary_loss_is_added_with_its_weight() -> None:
    fmap = map_dict()
    frame = _frame_of(fmap)
    torch.manual_seed(0)
    model = build_model("dien", fmap, embed_dim=4, attention_hidden=(8,), mlp_hidden=(8,)).train()
    batch = to_tensors(frame.batch(np.arange(32), model_inputs(fmap) + ("label",)), torch.device("cpu"))
    aux = model(batch).aux_loss
    assert aux is not None and aux.item() > 0
    losses = {w: _loss(model, batch, torch.device("cpu"), load_config(overrides={"train.aux_loss_weight": w}).train)
              for w in (0.0, 0.5)}
    assert (losses[0.5] - losses[0.0]).item() == pytest.approx(0.5 * aux.item(), rel=1e-4)


def test_group_counts_cover_sessions_and_negative_histories() -> None:
    fmap = map_dict()
    frame = _frame_of(fmap)
    counts = group_counts(frame, fmap)
    item_features = ("item_id", "item_id_history", "neg_item_id_history", "session_item_ids")
    expected = sum(np.bincount(frame[n].reshape(-1), minlength=fmap["vocab_sizes"]["item"]) for n in item_features)
    np.testing.assert_array_equal(counts["item"], expected)
    # the same frame with its sequences shared (as training frames store histories once per positive)
    shared = tuple(n for n in frame.columns if frame.columns[n].ndim > 1)
    index = np.arange(len(frame))[::-1] % (len(frame) // 2 + 1)  # most shared arrays serve two rows
    pooled = {n: frame.columns[n][: len(frame) // 2 + 1] for n in shared}
    sharing = Frame(columns={n: a for n, a in frame.columns.items() if n not in shared}, keys=frame.keys,
                    user_columns=pooled, user_index=index)
    gathered = Frame(columns={**sharing.columns, **{n: sharing[n] for n in shared}}, keys=frame.keys)
    assert shared and group_counts(sharing, fmap).keys() == group_counts(gathered, fmap).keys()
    for group, found in group_counts(sharing, fmap).items():
        assert found.dtype == np.int64
        np.testing.assert_array_equal(found, group_counts(gathered, fmap)[group])
