"""Stage 4: train a ranking model on the window ending at ds, log it to MLflow and register it.

Window: the training examples of ds - train_days + 1 .. ds - 1 train and the examples of ds validate.
On the first day of data there is no earlier day; then ds's examples are split by a hash of the
user id, 80 % of users train and 20 % validate (whole users, so no user is on both sides). The
split used is logged as the param `split` (`days` or `user_hash_80_20`).

The vocabulary is updated for the whole window, ds included, before the frames are built: ds's new
items get their indices today and the model has embedding rows for them (trained or not).

Batches are index slices of the frame's numpy arrays in a seeded `torch.randperm` order (no
DataLoader, nothing per sample in Python). On CPU the run is seeded and deterministic; with
`train.device: auto` and a GPU present it trains on CUDA under bf16 autocast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
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


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_version: str
    model_name: str
    metrics: dict[str, float]
    reused: bool = False  # True when the same inputs had already produced this version


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
    earlier = training_frame(con, first, last, spec) if cfg.train.train_days > 1 else None
    today = training_frame(con, ds, ds, spec)
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
    """Batch keys a model reads: its features and the history length."""
    return tuple(f["name"] for f in feature_map["features"]) + (feature_map["length"],)


def group_counts(frame: Frame, feature_map: dict[str, Any]) -> dict[str, np.ndarray]:
    """Occurrences of every embedding row in the frame, per group ([vocab_size] int64 each).

    The model's mini-batch aware L2 scales each row by 1 / its frequency in the training data.
    """
    sizes, counts = feature_map["vocab_sizes"], {}
    for f in feature_map["features"]:
        group = f.get("group")
        if group in sizes and f["name"] in frame.names:
            ids = np.minimum(frame[f["name"]].reshape(-1), sizes[group] - 1)  # defensive: never out of range
            counts[group] = counts.get(group, 0) + np.bincount(ids, minlength=sizes[group])
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
    """One pass over `frame` in a seeded random order; returns the mean training loss."""
    model.train()
    perm = torch.randperm(len(frame), generator=generator).numpy()
    total, seen, start = torch.zeros((), device=device), 0, time.perf_counter()
    bar = tqdm(total=len(frame), desc=f"epoch {epoch}", unit="ex", leave=False, mininterval=1.0)
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
        if step % 20 == 0:  # .item() syncs the GPU; do it rarely
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


def _fit(cfg: Config, model: torch.nn.Module, split: Split, fmap: dict[str, Any],
         device: torch.device) -> dict[str, float]:
    """Train for cfg.train.epochs, logging per-epoch metrics; returns the final epoch's metrics."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    names, metrics = model_inputs(fmap), {}
    for epoch in range(1, cfg.train.epochs + 1):
        train_loss = fit_epoch(model, split.train, optimizer, names, cfg.train, generator, device, epoch)
        scores = evaluate_frame(model, split.valid, fmap, device)
        metrics = {"train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()}}
        mlflow.log_metrics(metrics, step=epoch)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def training_fingerprint(cfg: Config, name: str, ds: str) -> str:
    """What determines the trained weights: model, configs, feature contract, dbt code and the window's data.

    The data part is an order-independent hash of the window's examples computed in SQL, so a rerun of
    ds over unchanged data finds the version it registered before instead of registering a copy.
    """
    con = connect(cfg, read_only=True)
    try:
        n, digest = con.execute(
            "SELECT count(*), coalesce(sum(hash(ds, example_id, label, item_id)), 0)::VARCHAR "
            "FROM marts.training_examples WHERE ds BETWEEN ? AND ?",
            [previous_ds(ds, cfg.train.train_days - 1), ds]).fetchall()[0]
    finally:
        con.close()
    payload = {"model": name, "ds": ds, "train": asdict(cfg.train), "features": asdict(cfg.features),
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
    return TrainResult(run_id=version.run_id, model_version=str(version.version), model_name=name,
                       metrics=dict(metrics), reused=True)


def train(cfg: Config, ds: str, model_name: str | None = None) -> TrainResult:
    """Train `model_name` (default cfg.train.model) for ds, log the run and register a new version.

    Idempotent: when a version was already trained from the same inputs (see `training_fingerprint`),
    it is returned instead of training again.
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
                        attention_hidden=cfg.train.attention_hidden, mlp_hidden=cfg.train.mlp_hidden).to(device)
    model.embedding.set_frequencies(group_counts(split.train, fmap))
    tags = {"ds": ds, "model_name": name, "git_sha": registry.git_sha(),
            "dbt_manifest_sha": registry.dbt_manifest_sha(cfg), "train_fingerprint": fingerprint}
    experiment_id = registry.ensure_experiment(cfg, name)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-{ds}", tags=tags) as run:
        mlflow.log_params(_params(cfg, name, split, device))
        mlflow.log_artifact(str(cfg.paths.feature_specs), artifact_path="feature_store")
        metrics = _fit(cfg, model, split, fmap, device)
        config = registry.model_config(name, cfg.train.embed_dim, cfg.train.attention_hidden, cfg.train.mlp_hidden)
        example = split.valid.batch(np.arange(min(8, len(split.valid))), model_inputs(fmap))
        version = registry.log_and_register(cfg, model.cpu(), config, fmap, example, tags)
    log.info("train ds=%s model=%s: run %s, version %s, %s", ds, name, run.info.run_id, version.version, metrics)
    return TrainResult(run_id=run.info.run_id, model_version=str(version.version), model_name=name, metrics=metrics)
