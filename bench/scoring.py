"""Benchmark: scoring throughput in (user, candidate) pairs per second, batched per user vs per pair.

    .venv/bin/python bench/scoring.py [--models din dien dsin] [--users 1000] [--candidates 200] [--threads 2]

For each model of `recsys.models.MODELS` (untrained weights: speed does not depend on them), random
inputs shaped like the feature store's scoring frame (feature_store/specs.yaml; histories of random
length 1..max_len, sessions likewise, negative histories all padding as at scoring time) are scored
three ways in the same process, on CPU with `--threads` threads:

- `model`: `model.score_candidates(users [U, ...], candidates [U, C])` over batches of whole users
  (recsys.score.SCORE_PAIRS pairs per call): the user side is computed once per user;
- `score_frame`: recsys.score.score_frame, i.e. the above plus the per-user top-K and the ranked
  history positions for the explanations (what `recsys score` does between reading and writing);
- `naive`: the per-pair path scoring used before, `model(batch)` over rows of 4096 (user, candidate)
  pairs with every pair carrying its user's history (recsys.train.predict), on a subset of users.

Each run appends one JSON line per model to bench/results/scoring.jsonl, with the load average
(other processes on the machine disturb the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store.retrieval import Frame  # noqa: E402
from feature_store.spec import load_spec  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.models import MODELS, build_model  # noqa: E402
from recsys.score import SCORE_PAIRS, score_frame  # noqa: E402
from recsys.train import predict  # noqa: E402

VOCAB = {"item": 50_000, "category": 200}  # other groups: 64
TOP_K = 50


def feature_map(vocab: dict[str, int]) -> dict[str, Any]:
    spec = load_spec()
    return spec.to_feature_map_dict({g: vocab.get(g, 64) for g in spec.groups})


def _ids(rng: np.random.Generator, size: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(2, size, shape, dtype=np.int64)


def synthetic_frame(fmap: dict[str, Any], users: int, candidates: int, seed: int = 0) -> Frame:
    """A scoring frame of `users` x `candidates` rows: target features per row, the rest per user."""
    rng = np.random.default_rng(seed)
    sizes = fmap["vocab_sizes"]
    lengths = rng.integers(1, 51, users)
    user_columns: dict[str, np.ndarray] = {fmap["length"]: lengths.astype(np.int64)}
    columns: dict[str, np.ndarray] = {}
    for f in fmap["features"]:
        size = sizes.get(f["group"], 64)
        if f["role"] == "target":
            columns[f["name"]] = _ids(rng, size, (users * candidates,))
        elif f["kind"] == "numeric":
            user_columns[f["name"]] = rng.random(users, dtype=np.float32)
        elif f["kind"] == "categorical":
            user_columns[f["name"]] = _ids(rng, size, (users,))
        elif f["role"] == "negative_history":
            user_columns[f["name"]] = np.zeros((users, f["max_len"]), dtype=np.int64)  # training only
        elif f["kind"] == "sequence":
            valid = np.arange(f["max_len"])[None, :] < np.minimum(lengths, f["max_len"])[:, None]
            user_columns[f["name"]] = np.where(valid, _ids(rng, size, (users, f["max_len"])), 0)
        else:  # session [U, S, L]
            shape = (users, f["max_sessions"], f["max_len"])
            valid = np.arange(f["max_len"])[None, None, :] < rng.integers(0, f["max_len"] + 1, shape[:2])[..., None]
            user_columns[f["name"]] = np.where(valid, _ids(rng, size, shape), 0)
    user_index = np.repeat(np.arange(users), candidates)
    keys = {"user_id": user_index.astype(np.int64) + 1, "item_id": columns[_first_target(fmap)],
            "candidate_source": np.full(users * candidates, "bench", dtype=object)}
    history = user_columns.get("item_id_history")
    user_keys = {"user_id": np.arange(users, dtype=np.int64) + 1}
    if history is not None:
        user_keys["item_id_history"] = history
    return Frame(columns=columns, keys=keys, user_columns=user_columns, user_keys=user_keys, user_index=user_index)


def _first_target(fmap: dict[str, Any]) -> str:
    return next(f["name"] for f in fmap["features"] if f["role"] == "target")


def _model_only(model: torch.nn.Module, frame: Frame, fmap: dict[str, Any], users: int, candidates: int) -> float:
    """Seconds for score_candidates over every user, in batches of whole users."""
    targets = [n for n in frame.columns]
    step = max(1, SCORE_PAIRS // candidates)
    tensors_u = {n: torch.from_numpy(a) for n, a in frame.user_columns.items()}
    tensors_c = {n: torch.from_numpy(frame.columns[n].reshape(users, candidates)) for n in targets}
    names = {f["name"] for f in fmap["features"]} | {fmap["length"]}
    started = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, users, step):
            u = {n: t[lo:lo + step] for n, t in tensors_u.items() if n in names}
            c = {n: t[lo:lo + step] for n, t in tensors_c.items()}
            model.score_candidates(u, c)
    return time.perf_counter() - started


def bench_model(name: str, users: int, candidates: int, naive_users: int, threads: int) -> dict[str, Any]:
    cfg = load_config()
    tc = cfg.train
    fmap = feature_map(VOCAB)
    model = build_model(name, fmap, embed_dim=tc.embed_dim, attention_hidden=tc.attention_hidden,
                        mlp_hidden=tc.mlp_hidden).eval()
    frame = synthetic_frame(fmap, users, candidates)
    device = torch.device("cpu")
    warm = frame.take(frame.user_index < 20)
    score_frame(model, warm, fmap, device, TOP_K)  # warm-up (allocator, kernels)
    model_s = _model_only(model, frame, fmap, users, candidates)
    started = time.perf_counter()
    score_frame(model, frame, fmap, device, TOP_K)
    frame_s = time.perf_counter() - started
    subset = frame.take(frame.user_index < naive_users)
    started = time.perf_counter()
    predict(model, subset, fmap, device)
    naive_s = time.perf_counter() - started
    pairs, naive_pairs = users * candidates, naive_users * candidates
    return {
        "bench": "scoring", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "model": name,
        "candidates": candidates, "users": users, "pairs": pairs, "threads": threads, "top_k": TOP_K,
        "embed_dim": tc.embed_dim, "model_pairs_per_s": round(pairs / model_s),
        "score_frame_pairs_per_s": round(pairs / frame_s), "naive_pairs": naive_pairs,
        "naive_pairs_per_s": round(naive_pairs / naive_s),
        "speedup_vs_naive": round((pairs / frame_s) / (naive_pairs / naive_s), 2),
        "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[m for m in ("din", "dien", "dsin") if m in MODELS])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--naive-users", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scoring.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        result = bench_model(name, args.users, args.candidates, min(args.naive_users, args.users), args.threads)
        with args.out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
