"""Training-step throughput of the models on synthetic batches (a quick check, not the benchmark).

The benchmark on the peer protocol is `make bench-models` (bench/models.py); this measures the model
code alone: batch 256, histories of 50 (60% full, the rest uniform 1..50), item + category, embedding
16, attention [64, 32], MLP [200, 80], sessions 5 x 10, Adam, BCE (+ the auxiliary loss), one JSON
line per model with the median step's samples/s, samples per CPU-second and the load average.

    python -m recsys.models.speed din dien dsin --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from recsys.models import FeatureMap, build_model

T, S, L, BATCH, ITEMS, CATEGORIES = 50, 5, 10, 256, 1683, 20


def feature_map() -> FeatureMap:
    features: list[dict] = []
    for target, group in (("item_id", "item"), ("category", "category")):
        features.append({"name": target, "kind": "categorical", "group": group, "role": "target"})
        features.append({"name": f"{target}_history", "kind": "sequence", "group": group, "role": "history",
                         "max_len": T, "target": target})
        features.append({"name": f"neg_{target}_history", "kind": "sequence", "group": group,
                         "role": "negative_history", "max_len": T, "positive": f"{target}_history"})
        features.append({"name": f"session_{group}_ids", "kind": "session", "group": group, "role": "sessions",
                         "max_len": L, "target": target, "max_sessions": S})
    return FeatureMap.from_dict({"features": features, "vocab_sizes": {"item": ITEMS, "category": CATEGORIES}})


def synthetic_batches(n_batches: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    n = BATCH * n_batches
    lengths = torch.where(torch.rand(n, generator=g) < 0.6, T, torch.randint(1, T + 1, (n,), generator=g))
    valid = torch.arange(T) < lengths[:, None]
    sessions = torch.randint(0, S + 1, (n,), generator=g)
    in_session = torch.arange(L).view(1, 1, L) < torch.randint(1, L + 1, (n, S, 1), generator=g)
    session_valid = in_session & (torch.arange(S).view(1, S, 1) < sessions.view(-1, 1, 1))
    data = {"history_length": lengths, "label": torch.randint(0, 2, (n,), generator=g).float()}
    for target, group, high in (("item_id", "item", ITEMS), ("category", "category", CATEGORIES)):
        data[target] = torch.randint(2, high, (n,), generator=g)
        data[f"{target}_history"] = torch.randint(2, high, (n, T), generator=g) * valid
        data[f"neg_{target}_history"] = torch.randint(2, high, (n, T), generator=g) * valid
        data[f"session_{group}_ids"] = torch.randint(2, high, (n, S, L), generator=g) * session_valid
    return [{k: v[i * BATCH:(i + 1) * BATCH] for k, v in data.items()} for i in range(n_batches)]


def measure(name: str, batches: list[dict[str, torch.Tensor]], warmup: int = 10) -> dict:
    """Median training step of model `name` over `batches` (the first `warmup` steps excluded)."""
    torch.manual_seed(0)
    model = build_model(name, feature_map(), embed_dim=16, attention_hidden=(64, 32), mlp_hidden=(200, 80))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    wall, cpu = [], []
    for batch in batches:
        w0, c0 = time.perf_counter(), time.process_time()
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch["label"]) + 1e-6 * model.regularization(batch)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    wall, cpu = wall[warmup:], cpu[warmup:]
    return {"model": name, "threads": torch.get_num_threads(), "batch": BATCH, "history": T,
            "samples_per_s_median": round(BATCH / sorted(wall)[len(wall) // 2]),
            "samples_per_cpu_s": round(BATCH * len(cpu) / sum(cpu)), "steps": len(wall),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["base", "din", "dien", "dsin"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = synthetic_batches(args.steps)
    for name in args.models:
        print(json.dumps(measure(name, batches)), flush=True)


if __name__ == "__main__":
    main()
