"""Stage 4: train a ranking model on the window ending at ds, log it to MLflow and register it.

Window: the training examples of ds - train_days + 1 .. ds - 1 train and the examples of ds validate.
On the first day of data there is no earlier day; then ds's examples are split by a hash of the
user id, 80 % of users train and 20 % validate (whole users, so no user is on both sides). The
split used is logged as the param `split` (`days` or `user_hash_80_20`).

The vocabulary is updated for the whole window, ds included, before the frames are built: ds's new
items get their indices today and the model has embedding rows for them (trained or not).

Batches are index slices of the frame's numpy arrays in a seeded `torch.randperm` order (no
DataLoader, nothing per sample in Python). Every feature of the feature map is fed, so models with
extra inputs (DIEN's `neg_*_history`, DSIN's session arrays) need nothing here; a model's auxiliary
loss is added with weight `train.aux_loss_weight`. On CPU the run is seeded and deterministic; with
`train.device: auto` and a GPU present it trains on CUDA under bf16 autocast.

Early stopping: after every epoch the model is scored on the validation frame; training stops after
`train.patience` epochs without a better validation GAUC and the best epoch's weights are registered.

Checkpoints: after every epoch the model, optimizer, epoch, RNG states, early-stopping state and
metric history go to `<checkpoints>/<model>/<ds>/<fingerprint>/last.pt` (written to a temporary file,
then renamed, so a crash never leaves half a checkpoint). A rerun of the same ds / model / inputs after
a crash continues from the last complete epoch in the same MLflow run; on CPU the result is identical
to an uninterrupted run. The checkpoint directory is removed once the version is registered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from feature_store.retrieval import Frame, clamp_to_vocab, feature_map_dict, training_frame
from feature_store.spec import FeatureSpecs, load_spec
from feature_store.vocab import update_vocab
from recsys import registry
from recsys.config import Config, TrainConfig
from recsys.ingest import previous_ds, validate_ds
from recsys.metrics import auc, gauc, logloss
from recsys.models import MODELS, build_model
from recsys.models.features import FeatureMap
from recsys.warehouse import connect

log = logging.getLogger(__name__)

GAUC_WEIGHTING = "impressions"  # w_u = the user's samples, as in the DIN paper
EVAL_BATCH = 4096
VAL_SHARE_PERCENT = 20
CHECKPOINT = "last.pt"
HEATMAP_USERS, HEATMAP_ROWS_PER_USER = 4, 4


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_version: str
    model_name: str
    metrics: dict[str, float]  # the registered (best) epoch's metrics
    reused: bool = False  # True when the same inputs had already produced this version
    best_epoch: int = 0
    epochs_run: int = 0
    resumed_from_epoch: int = 0  # the last complete epoch a crashed run was resumed from (0: fresh start)


@dataclass(frozen=True)
class Split:
    train: Frame
    valid: Frame
    kind: str  # "days" or "user_hash_80_20"
    train_from: str
    train_to: str


# --------------------------------------------------------------------------- data


def user_bucket(user_ids: np.ndarray) -> np.ndarray:
    """Stable bucket 0..99 per user id (splitmix64 finaliser), independent of row order and process.

    Args:
        user_ids: int64 [N]. Returns int64 [N].
    """
    x = user_ids.astype(np.uint64)
    with np.errstate(over="ignore"):  # modular arithmetic on purpose
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(100)).astype(np.int64)


def load_split(con: duckdb.DuckDBPyConnection, cfg: Config, ds: str, spec: FeatureSpecs) -> Split:
    """Training and validation frames for ds (see the module docstring for the rule)."""
    first, last = previous_ds(ds, cfg.train.train_days - 1), previous_ds(ds)
    earlier = training_frame(con, first, last, spec, served=True) if cfg.train.train_days > 1 else None
    today = training_frame(con, ds, ds, spec, served=True)
    if len(today) == 0:
        raise ValueError(f"no training examples for ds={ds} in marts.training_examples; run `recsys transform` first")
    if earlier is not None and len(earlier) > 0:
        return Split(earlier, today, "days", first, last)
    log.warning("train ds=%s: no examples before ds; splitting ds's users 80/20 by hash", ds)
    valid = user_bucket(today.keys["user_id"]) < VAL_SHARE_PERCENT
    if valid.all() or not valid.any():
        raise ValueError(f"ds={ds}: the 80/20 user split left one side empty; too few users to train")
    return Split(today.take(~valid), today.take(valid), "user_hash_80_20", ds, ds)


def model_inputs(feature_map: dict[str, Any]) -> tuple[str, ...]:
    """Batch keys a model reads: all its features (whatever their kind) and the history length."""
    return tuple(f["name"] for f in feature_map["features"]) + (feature_map["length"],)


def group_counts(frame: Frame, feature_map: dict[str, Any]) -> dict[str, np.ndarray]:
    """Occurrences of every embedding row in the frame, per group ([vocab_size] int64 each).

    The model's mini-batch aware L2 scales each row by 1 / its frequency in the training data. Any
    feature shape works ([N], [N, T], [N, S, L]): ids are counted over all positions.
    """
    sizes, counts = feature_map["vocab_sizes"], {}
    for f in feature_map["features"]:
        group, name = f.get("group"), f["name"]
        if group not in sizes or name not in frame.names:
            continue
        if name in frame.user_columns:
            # shared arrays (one history per positive, used by its negatives too): count each shared row
            # as often as rows use it, without gathering [N, T] copies
            values = frame.user_columns[name].reshape(len(frame.user_columns[name]), -1)
            uses = np.bincount(frame.user_index, minlength=len(values))
            ids = np.minimum(values, sizes[group] - 1)  # defensive: never out of range
            weights = np.broadcast_to(uses[:, None], ids.shape).reshape(-1)
            found = np.rint(np.bincount(ids.reshape(-1), weights=weights, minlength=sizes[group])).astype(np.int64)
        else:
            found = np.bincount(np.minimum(frame[name].reshape(-1), sizes[group] - 1), minlength=sizes[group])
        counts[group] = counts.get(group, 0) + found
    return counts


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------- model loop


def resolve_device(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.train.device)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
          tc: TrainConfig) -> torch.Tensor:
    """BCE on the logits + l2_reg * mini-batch aware L2 (+ aux_loss_weight * the auxiliary loss, if any)."""
    with _autocast(device):
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits.float(), batch["label"].float())
        loss = loss + tc.l2_reg * model.regularization(batch).float()
        if out.aux_loss is not None:
            loss = loss + tc.aux_loss_weight * out.aux_loss.float()
    return loss


def fit_epoch(model: torch.nn.Module, frame: Frame, optimizer: torch.optim.Optimizer, names: tuple[str, ...],
              tc: TrainConfig, generator: torch.Generator, device: torch.device, epoch: int) -> float:
    """One pass over `frame` in a seeded random order; returns the mean training loss.

    The progress bar (loss, examples/s) shows only on a terminal (tqdm's `disable=None`).
    """
    model.train()
    perm = torch.randperm(len(frame), generator=generator).numpy()
    total, seen, start = torch.zeros((), device=device), 0, time.perf_counter()
    bar = tqdm(total=len(frame), desc=f"epoch {epoch}", unit="ex", leave=False, mininterval=1.0, disable=None)
    for step, lo in enumerate(range(0, len(frame), tc.batch_size)):
        rows = perm[lo:lo + tc.batch_size]
        batch = to_tensors(frame.batch(rows, names + ("label",)), device)
        loss = _loss(model, batch, device, tc)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(rows)
        seen += len(rows)
        bar.update(len(rows))
        if step % 20 == 0 and not bar.disable:  # .item() syncs the GPU; do it rarely
            bar.set_postfix(loss=f"{total.item() / seen:.4f}", ex_s=f"{seen / (time.perf_counter() - start):.0f}")
    bar.close()
    return total.item() / max(seen, 1)


def predict_batches(model: torch.nn.Module, frame: Frame, feature_map: dict[str, Any], device: torch.device,
                    batch_size: int = EVAL_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield (rows [B], probabilities [B], attention [B, T] or None) over the frame in row order.

    Indices the model's vocabulary does not know (added after it was trained) are fed as unknown (1).
    """
    model.eval()
    names = model_inputs(feature_map)
    with torch.inference_mode():
        for lo in range(0, len(frame), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(frame)))
            batch = to_tensors(clamp_to_vocab(frame.batch(rows, names), feature_map), device)
            with _autocast(device):
                out = model(batch)
            attention = None if out.attention is None else out.attention.float().cpu().numpy()
            yield rows, torch.sigmoid(out.logits.float()).cpu().numpy(), attention


def predict(model: torch.nn.Module, frame: Frame, feature_map: dict[str, Any], device: torch.device) -> np.ndarray:
    """Click probabilities [N] for every row of the frame."""
    parts = [probs for _, probs, _ in predict_batches(model, frame, feature_map, device)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def evaluate_frame(model: torch.nn.Module, frame: Frame, feature_map: dict[str, Any],
                   device: torch.device) -> dict[str, float]:
    """AUC, GAUC (impression-weighted) and logloss of the model on a labelled frame."""
    probs = predict(model, frame, feature_map, device)
    labels = frame["label"]
    result = gauc(frame.keys["user_id"], labels, probs, weighting=GAUC_WEIGHTING)
    return {"auc": float(auc(labels, probs)), "gauc": float(result.value), "logloss": float(logloss(labels, probs)),
            "gauc_users": float(result.users_used)}


# --------------------------------------------------------------------------- early stopping + checkpoints


@dataclass
class FitState:
    """Everything besides model/optimizer/RNG that a resumed run needs to continue exactly."""

    epoch: int = 0  # last complete epoch
    history: list[dict[str, float]] = field(default_factory=list)  # metrics per epoch, epoch 1 first
    best_epoch: int = 0
    best_gauc: float = -math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # CPU copy of the best epoch's weights
    run_id: str = ""

    def update(self, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Record one finished epoch; True when its validation GAUC is the best so far (NaN never is)."""
        self.epoch += 1
        self.history.append(metrics)
        value = metrics["val_gauc"]
        if self.best_epoch and not value > self.best_gauc:  # NaN compares False: not better
            return False
        self.best_epoch, self.best_gauc = self.epoch, value if not math.isnan(value) else -math.inf
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def should_stop(self, patience: int) -> bool:
        """Early stopping: `patience` epochs in a row without a better validation GAUC."""
        return self.best_epoch > 0 and self.epoch - self.best_epoch >= patience


def checkpoint_path(cfg: Config, name: str, ds: str, fingerprint: str) -> Path:
    return Path(cfg.paths.checkpoints) / name / ds / fingerprint / CHECKPOINT


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"batch_order": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["batch_order"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, state: FitState) -> None:
    """Write the checkpoint atomically: a temporary file in the same directory, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"epoch": state.epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "rng": _rng_state(generator), "history": state.history, "best_epoch": state.best_epoch,
               "best_gauc": state.best_gauc, "best_state": state.best_state, "run_id": state.run_id}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".last-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, device: torch.device) -> FitState | None:
    """Restore model, optimizer and RNG states from `path` (weights_only=True); None when there is none."""
    if not path.is_file():
        return None
    payload = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    _set_rng_state(generator, {k: _cpu_state(v) for k, v in payload["rng"].items()})
    return FitState(epoch=int(payload["epoch"]), history=list(payload["history"]),
                    best_epoch=int(payload["best_epoch"]), best_gauc=float(payload["best_gauc"]),
                    best_state={k: v.cpu() for k, v in payload["best_state"].items()}, run_id=str(payload["run_id"]))


def _cpu_state(value: Any) -> Any:
    """RNG states must be CPU ByteTensors whatever map_location did."""
    if isinstance(value, list):
        return [v.cpu() for v in value]
    return value.cpu()


# --------------------------------------------------------------------------- MLflow artifacts


def _plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: no training-curve / attention plots")
        return False
    return True


def plot_training_curve(history: list[dict[str, float]], best_epoch: int, path: Path) -> None:
    """PNG: train loss and validation logloss (left), validation AUC and GAUC (right) per epoch."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

    epochs = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, keys in ((left, ("train_loss", "val_logloss")), (right, ("val_auc", "val_gauc"))):
        for key in keys:
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.legend()
    left.set_title("loss")
    right.set_title(f"validation (GAUC weighting: {GAUC_WEIGHTING})")
    fig.savefig(path, dpi=100)


def heatmap_rows(frame: Frame, length_key: str, users: int = HEATMAP_USERS,
                 per_user: int = HEATMAP_ROWS_PER_USER) -> np.ndarray:
    """Rows of the first `users` users (by id) with a history, up to `per_user` rows each: int [R]."""
    lengths = frame[length_key] if length_key in frame.names else np.ones(len(frame), dtype=np.int64)
    rows = np.flatnonzero(lengths > 0)
    order = rows[np.argsort(frame.keys["user_id"][rows], kind="stable")]
    chosen = [r for u in np.unique(frame.keys["user_id"][order])[:users]
              for r in order[frame.keys["user_id"][order] == u][:per_user]]
    return np.asarray(chosen, dtype=np.int64)


def plot_attention(model: torch.nn.Module, frame: Frame, fmap: dict[str, Any], device: torch.device,
                   path: Path) -> bool:
    """PNG: attention weight per history position for a few (user, target item) rows; False without attention."""
    rows = heatmap_rows(frame, fmap["length"])
    if len(rows) == 0:
        return False
    sub = frame.take(rows)
    parts = [att for _, _, att in predict_batches(model, sub, fmap, device)]
    if any(p is None for p in parts):
        return False
    attention = np.concatenate(parts).reshape(len(rows), -1)
    lengths = sub[fmap["length"]] if fmap["length"] in sub.names else np.full(len(rows), attention.shape[1])
    shown = np.where(np.arange(attention.shape[1])[None, :] < lengths[:, None], attention, np.nan)
    width = int(max(lengths.max(), 1))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(2 + 0.25 * width, 16), 1 + 0.35 * len(rows)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown[:, :width], aspect="auto", cmap="viridis", interpolation="nearest")
    labels = [f"user {u} / item {i} ({'click' if y else 'no click'})" for u, i, y in
              zip(sub.keys["user_id"], sub.keys["item_id"], sub["label"], strict=True)]
    ax.set_yticks(np.arange(len(rows)), labels=labels, fontsize=7)
    ax.set_xlabel("history position (oldest first; blank = padding)")
    ax.set_title("attention weight per behaviour")
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=100)
    return True


def _log_artifacts(model: torch.nn.Module, split: Split, fmap: dict[str, Any], state: FitState,
                   device: torch.device) -> None:
    """feature_map.json, training_curve.png and (models with attention) attention_heatmap.png."""
    mlflow.log_dict(fmap, "feature_map.json")
    if not _plots_available():
        return
    with tempfile.TemporaryDirectory(prefix="recsys-plots-") as tmp:
        curve = Path(tmp) / "training_curve.png"
        plot_training_curve(state.history, state.best_epoch, curve)
        mlflow.log_artifact(str(curve), artifact_path="plots")
        heatmap = Path(tmp) / "attention_heatmap.png"
        if plot_attention(model, split.valid, fmap, device, heatmap):
            mlflow.log_artifact(str(heatmap), artifact_path="plots")


# --------------------------------------------------------------------------- stage


def _params(cfg: Config, model_name: str, split: Split, device: torch.device) -> dict[str, Any]:
    params = {f"train.{k}": v for k, v in asdict(cfg.train).items()}
    params.update({f"features.{k}": v for k, v in asdict(cfg.features).items()})
    params.update(model_name=model_name, split=split.kind, train_from=split.train_from, train_to=split.train_to,
                  n_train=len(split.train), n_valid=len(split.valid), gauc_weighting=GAUC_WEIGHTING,
                  device=str(device))
    return {k: str(v) for k, v in params.items()}


def _prepare(cfg: Config, ds: str) -> tuple[Split, dict[str, Any]]:
    """Update the vocabulary for the window, then read the frames and the feature map."""
    spec = load_spec(cfg.paths.feature_specs)
    con = connect(cfg, read_only=False)
    try:
        update_vocab(con, previous_ds(ds, cfg.train.train_days - 1), ds, spec)
        split = load_split(con, cfg, ds, spec)
        fmap = FeatureMap.from_dict(feature_map_dict(con, spec)).to_dict()
    finally:
        con.close()
    return split, fmap


def _log_missing_epochs(client: mlflow.MlflowClient, state: FitState) -> None:
    """Log the epochs of the history the run does not have yet (a crash between checkpoint and logging)."""
    logged = {m.step for m in client.get_metric_history(state.run_id, "train_loss")}
    for epoch, metrics in enumerate(state.history, start=1):
        if epoch not in logged:
            mlflow.log_metrics(_finite_metrics(metrics), step=epoch)


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def _fit(cfg: Config, model: torch.nn.Module, split: Split, fmap: dict[str, Any], device: torch.device,
         optimizer: torch.optim.Optimizer, generator: torch.Generator, state: FitState, ckpt: Path) -> FitState:
    """Train from state.epoch + 1 until cfg.train.epochs or early stopping; checkpoint and log every epoch."""
    names = model_inputs(fmap)
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        if state.should_stop(cfg.train.patience):
            break
        train_loss = fit_epoch(model, split.train, optimizer, names, cfg.train, generator, device, epoch)
        scores = evaluate_frame(model, split.valid, fmap, device)
        metrics = {"train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()}}
        state.update(metrics, model)
        save_checkpoint(ckpt, model, optimizer, generator, state)
        mlflow.log_metrics(_finite_metrics(metrics), step=epoch)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
    return state


def training_fingerprint(cfg: Config, name: str, ds: str) -> str:
    """What determines the trained weights: model, configs, feature contract, dbt code and the window's data.

    The data part is an order-independent hash of the window's examples computed in SQL, so a rerun of
    ds over unchanged data finds the version it registered before instead of registering a copy. The
    list of enabled models (`train.models`) does not change a model's weights and is left out.
    """
    con = connect(cfg, read_only=True)
    try:
        n, digest = con.execute(
            "SELECT count(*), coalesce(sum(hash(ds, example_id, label, item_id)), 0)::VARCHAR "
            "FROM marts.training_examples WHERE ds BETWEEN ? AND ?",
            [previous_ds(ds, cfg.train.train_days - 1), ds]).fetchall()[0]
    finally:
        con.close()
    # other models' options and the list of enabled models do not change this model's weights
    train_cfg = {k: v for k, v in asdict(cfg.train).items() if k not in ("models", "model", "model_options")}
    train_cfg["options"] = cfg.train.options_of(name)
    payload = {"model": name, "ds": ds, "train": train_cfg, "features": asdict(cfg.features),
               "specs": hashlib.sha256(Path(cfg.paths.feature_specs).read_bytes()).hexdigest(),
               "dbt": registry.dbt_manifest_sha(cfg), "data": [n, digest]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _reuse(cfg: Config, name: str, fingerprint: str) -> TrainResult | None:
    """The version already trained from exactly these inputs, if any (a rerun of ds is then a no-op)."""
    found = registry.find_versions(cfg, train_fingerprint=fingerprint)
    if not found:
        return None
    version = found[-1]
    metrics = registry.configure(cfg).get_run(version.run_id).data.metrics
    log.info("train: version %s was already trained from the same inputs (fingerprint %s); reusing it",
             version.version, fingerprint)
    # the registered weights are the best epoch's: report its metrics, not the last epoch's
    best = {k.removeprefix("best_"): v for k, v in metrics.items() if k.startswith("best_") and k != "best_epoch"}
    return TrainResult(run_id=version.run_id, model_version=str(version.version), model_name=name,
                       metrics=best or dict(metrics), reused=True, best_epoch=int(metrics.get("best_epoch", 0)),
                       epochs_run=int(metrics.get("epochs_run", 0)))


def _start_run(cfg: Config, name: str, ds: str, tags: dict[str, str], state: FitState) -> mlflow.ActiveRun:
    """The crashed run again when resuming (its earlier epochs stay in one run), else a new run."""
    experiment_id = registry.ensure_experiment(cfg, name)
    if state.run_id:
        try:
            return mlflow.start_run(run_id=state.run_id, tags=tags)
        except MlflowException:
            log.warning("train: run %s of the checkpoint is gone; logging the resumed run as a new run", state.run_id)
    return mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-{ds}", tags=tags)


def train(cfg: Config, ds: str, model_name: str | None = None) -> TrainResult:
    """Train `model_name` (default cfg.train.model) for ds, log the run and register a new version.

    Idempotent: when a version was already trained from the same inputs (see `training_fingerprint`),
    it is returned instead of training again; after a crash the rerun resumes from the checkpoint.
    """
    ds = validate_ds(ds)
    name = model_name or cfg.train.model
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    torch.set_num_threads(cfg.train.num_threads)
    fingerprint = training_fingerprint(cfg, name, ds)
    split, fmap = _prepare(cfg, ds)  # the vocabulary update runs either way (idempotent)
    reused = _reuse(cfg, name, fingerprint)
    if reused is not None:
        return reused
    device = resolve_device(cfg)
    torch.manual_seed(cfg.train.seed)  # same initial weights for the same config
    model = build_model(name, FeatureMap.from_dict(fmap), embed_dim=cfg.train.embed_dim,
                        attention_hidden=cfg.train.attention_hidden, mlp_hidden=cfg.train.mlp_hidden,
                        **cfg.train.options_of(name)).to(device)
    model.embedding.set_frequencies(group_counts(split.train, fmap))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    ckpt = checkpoint_path(cfg, name, ds, fingerprint)
    state = load_checkpoint(ckpt, model, optimizer, generator, device) or FitState()
    resumed_from = state.epoch
    if resumed_from:
        log.info("train ds=%s model=%s: resuming after epoch %d from %s", ds, name, resumed_from, ckpt)
    tags = {"ds": ds, "model_name": name, "git_sha": registry.git_sha(),
            "dbt_manifest_sha": registry.dbt_manifest_sha(cfg), "train_fingerprint": fingerprint}
    client = registry.configure(cfg)
    with _start_run(cfg, name, ds, tags, state) as run:
        state.run_id = run.info.run_id
        logged = client.get_run(state.run_id).data.params
        mlflow.log_params({k: v for k, v in _params(cfg, name, split, device).items() if k not in logged})
        if resumed_from:
            mlflow.set_tag("resumed_from_epoch", str(resumed_from))
            _log_missing_epochs(client, state)
        state = _fit(cfg, model, split, fmap, device, optimizer, generator, state, ckpt)
        if not state.best_epoch:
            raise RuntimeError(f"train ds={ds} model={name}: no epoch ran (train.epochs={cfg.train.epochs})")
        model.load_state_dict(state.best_state)  # early stopping: register the best epoch's weights
        best = state.history[state.best_epoch - 1]
        mlflow.log_metrics({"best_epoch": state.best_epoch, "epochs_run": state.epoch,
                            **{f"best_{k}": v for k, v in _finite_metrics(best).items()}})
        mlflow.log_artifact(str(cfg.paths.feature_specs), artifact_path="feature_store")
        _log_artifacts(model, split, fmap, state, device)
        config = registry.model_config(name, cfg.train.embed_dim, cfg.train.attention_hidden, cfg.train.mlp_hidden,
                                       cfg.train.options_of(name))
        example = split.valid.batch(np.arange(min(8, len(split.valid))), model_inputs(fmap))
        version = registry.log_and_register(cfg, model.cpu(), config, fmap, example, tags)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # registered: the checkpoint has served its purpose
    log.info("train ds=%s model=%s: run %s, version %s, best epoch %d of %d, %s", ds, name, run.info.run_id,
             version.version, state.best_epoch, state.epoch, best)
    return TrainResult(run_id=run.info.run_id, model_version=str(version.version), model_name=name, metrics=best,
                       best_epoch=state.best_epoch, epochs_run=state.epoch, resumed_from_epoch=resumed_from)


def train_all(cfg: Config, ds: str) -> dict[str, TrainResult]:
    """Train every enabled model (`train.models`) for ds, in order; `recsys promote` then picks the best."""
    return {name: train(cfg, ds, name) for name in dict.fromkeys(cfg.train.models)}
