"""Our Base / DIN / DIEN / DSIN on the peer benchmark protocol, side by side with the peer libraries.

Protocol and timing are those of `../shared/bench/peers` (README there): MovieLens-100K, leave-last-out,
one sampled negative per position, item id + category only, emb 16, attention MLP [64, 32], DNN [200, 80],
batch 256, Adam 1e-3, 2 epochs, seed 2024, 2 threads. The peers' `common.py` is imported, not copied:
the same `load`, `add_neg_history`, `sessions` (30-minute rule), `StepTimer` (optimizer step hook;
samples/s over batches 21..end) and `metrics` (AUC, GAUC, logloss).

Every model runs in its own process (so `peak_rss_mb` is that model's) and appends one line to
`bench/results/models.jsonl` with the peers' fields, `"peer": "recsys"`, a `run_id` shared by the run
and the load average. With `--peers` the peer runners (their own venvs, see `setup_venvs.sh`) run in the
same invocation and their lines are appended to the same file with the same `run_id`; a summary of the
ratios within the run closes the output.

    python bench/models.py                      # ours: base, din, dien, dsin (those in recsys.models.MODELS)
    python bench/models.py --peers              # ours + the peers, one run
    python bench/models.py --summary RUN_ID     # the ratios of a recorded run

Batches are slices of tensors that are permuted once per epoch into preallocated buffers (no per-sample
Python, no DataLoader). Full batches go through `torch.compile` (`--compile auto` uses it on CPU when a
C++ compiler is present); the last, shorter batch of an epoch runs eagerly on the same parameters rather
than triggering a recompile inside the timed window.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "bench" / "peers"))
PEERS_VENVS = Path(os.environ.get("PEERS_VENVS", "/tmp/peers"))
RESULTS = ROOT / "bench" / "results" / "models.jsonl"
OUR_MODELS = ("base", "din", "dien", "dsin")
# `--compile auto`: torch.compile where it measured faster (train step, batch 256, process CPU time; 2026-12-01 on
# the loaded 2-core machine): DIN 2 threads 128-151 vs 206-221 ms/step compiled vs eager (1 thread: equal),
# DSIN 1 thread 23.0 vs 30.0 ms; DIEN 1 thread 97.6 vs 64.7 ms (slower: the GRU loops and the
# data-dependent `valid_steps` cut), so DIEN stays eager. Base follows DIN (same layers, no attention).
COMPILE_AUTO = {"base": True, "din": True, "dien": False, "dsin": True}
AUX_LOSS_WEIGHT = 1.0  # protocol: alpha = 1.0 for every DIEN with an auxiliary loss
MAX_SESSIONS, SESSION_LEN = 5, 10  # contract defaults (dbt vars dsin_max_sessions / dsin_session_len)
# (name, venv, script, args, slow DIEN): the runs and the DIEN max-batches rule of the peers' run_all.sh; the
# reference and the fastest libraries (fuxictr, per the peers' README) first, so that a run cut short still
# has the figures the ratios need
PEER_RUNS = (
    ("torch_ref_DIN", "ref", "run_torch_ref.py", (), False),
    ("fuxictr_DIN", "fuxictr", "run_fuxictr.py", ("--model", "DIN"), False),
    ("fuxictr_DIEN", "fuxictr", "run_fuxictr.py", ("--model", "DIEN"), False),  # fast: run_all.sh runs it fully
    ("deepctr_DIN", "deepctr", "run_deepctr.py", ("--model", "DIN"), False),
    ("deepctr_DIEN", "deepctr", "run_deepctr.py", ("--model", "DIEN"), True),
    ("rechub_DIN", "rechub", "run_rechub.py", ("--model", "DIN"), False),
    ("rechub_DIEN", "rechub", "run_rechub.py", ("--model", "DIEN"), True),
    ("recbole_DIN", "recbole", "run_recbole.py", ("--model", "DIN"), False),
    ("recbole_DIEN", "recbole", "run_recbole.py", ("--model", "DIEN"), True),
)


def peers_common(peers_dir: Path = PEERS_DIR) -> ModuleType:
    """Import the peers' `common.py` (protocol constants, loading, StepTimer, metrics)."""
    if not (peers_dir / "common.py").is_file():
        raise FileNotFoundError(f"peer benchmark not found at {peers_dir} (set PEERS_DIR)")
    if str(peers_dir) not in sys.path:
        sys.path.insert(0, str(peers_dir))
    import common  # the peers' module, importable only after the path insert

    return common


# ---------------------------------------------------------------- data -> feature map and tensors


def feature_map(meta: Mapping[str, Any], model: str, max_len: int = 50) -> dict[str, Any]:
    """The protocol's feature map (dict form) for `model`: item id + category targets and histories;
    DIEN adds the negative histories; DSIN has the sessions instead of the histories (shapes per the
    feature contract)."""
    feats: list[dict[str, Any]] = [
        {"name": "item_id", "kind": "categorical", "role": "target", "group": "item"},
        {"name": "category", "kind": "categorical", "role": "target", "group": "category"},
        {"name": "item_id_history", "kind": "sequence", "role": "history", "group": "item", "max_len": max_len,
         "target": "item_id"},
        {"name": "category_history", "kind": "sequence", "role": "history", "group": "category",
         "max_len": max_len, "target": "category"},
    ]
    if model == "dien":
        feats += [{"name": f"neg_{h}", "kind": "sequence", "role": "negative_history", "group": g,
                   "max_len": max_len, "positive": h}
                  for h, g in (("item_id_history", "item"), ("category_history", "category"))]
    if model == "dsin":  # DSIN reads only the sessions (as the paper): no flat histories to embed
        feats = feats[:2] + [{"name": s, "kind": "session", "role": "sessions", "group": g, "target": t,
                   "max_sessions": MAX_SESSIONS, "max_len": SESSION_LEN}
                  for s, g, t in (("session_item_ids", "item", "item_id"),
                                  ("session_category_ids", "category", "category"))]
    return {"features": feats, "vocab_sizes": {"item": int(meta["item_vocab"]), "category": int(meta["cat_vocab"])},
            "label": "label", "length": "history_length"}


def session_arrays(pc: ModuleType, split: str, d: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`pc.sessions` (a per-sample loop, ~10 s on train) cached as npz next to the prepared data.

    Returns items, categories, each int64 [N, S, L].
    """
    cache = Path(pc.DATA) / f"sessions_{split}_{MAX_SESSIONS}x{SESSION_LEN}.npz"
    source = Path(pc.DATA) / f"{split}.parquet"
    if cache.is_file() and cache.stat().st_mtime >= source.stat().st_mtime:
        with np.load(cache) as z:
            return z["items"], z["cats"]
    items, cats, _, _ = pc.sessions(d, max_sess=MAX_SESSIONS, max_sess_len=SESSION_LEN)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, items=items, cats=cats)
    os.replace(tmp, cache)  # atomic: a killed run never leaves half a cache
    return items, cats


def protocol_arrays(pc: ModuleType, split: str, model: str, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The split as batch-keyed numpy arrays: targets [N], histories [N, T], length [N], label [N],
    user [N]; plus neg histories [N, T] (DIEN) or sessions [N, S, L] (DSIN)."""
    d = pc.load(split)
    out = {"item_id": d["item"], "category": d["cat"], "item_id_history": d["hist_item"],
           "category_history": d["hist_cat"], "history_length": d["seq_len"], "label": d["label"],
           "user": d["user"]}
    if model == "dien":
        pc.add_neg_history(d, meta)
        out["neg_item_id_history"], out["neg_category_history"] = d["neg_hist_item"], d["neg_hist_cat"]
    if model == "dsin":
        out["session_item_ids"], out["session_category_ids"] = session_arrays(pc, split, d)
    return out


# ---------------------------------------------------------------- training and evaluation


def can_compile() -> bool:
    """Inductor on CPU needs a C++ compiler."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


def make_loss_fn(model: Any, aux_weight: float) -> Callable[[dict[str, Any]], Any]:
    """batch -> scalar loss: mean BCE on the logits (+ aux_weight * the model's auxiliary loss)."""
    def loss_fn(batch: dict[str, Any]) -> Any:
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch["label"])
        if out.aux_loss is not None:
            loss = loss + aux_weight * out.aux_loss
        return loss

    return loss_fn


def train(model: Any, data: Mapping[str, Any], names: tuple[str, ...], timer: Any, *, epochs: int, batch: int,
          lr: float, seed: int, compiled: bool, aux_weight: float = AUX_LOSS_WEIGHT) -> float:
    """Adam on mean BCE, `epochs` passes over `data` (tensors [N, ...]) in seeded random order.

    Each epoch permutes every input once into a preallocated buffer (index_select out=) and then
    slices it, so a batch costs no gather and no Python per sample. Returns the last batch's loss.
    """
    n = int(data["label"].shape[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    timer.attach(optimizer)
    eager = make_loss_fn(model, aux_weight)
    if compiled:
        from recsys.models.layers import keep_lookups_eager

        keep_lookups_eager(model)
    full = torch.compile(eager, dynamic=False) if compiled else eager
    keys = (*names, "label")
    buffers = {k: torch.empty_like(data[k]) for k in keys}
    generator = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    timer.start()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=generator)
        for k in keys:
            torch.index_select(data[k], 0, perm, out=buffers[k])
        for start in range(0, n, batch):
            b = {k: v[start:start + batch] for k, v in buffers.items()}
            # the last, shorter batch runs eagerly: a static-shape graph would recompile in the timed window
            loss = (full if b["label"].shape[0] == batch else eager)(b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(f"  epoch {epoch} loss {loss.item():.4f} t={time.perf_counter() - timer.t0:.1f}s", flush=True)
    return float(loss.item())


def predict(model: Any, data: Mapping[str, Any], names: tuple[str, ...], chunk: int = 4096) -> np.ndarray:
    """Eval-mode probabilities [N] (eager; the compiled graph is for training shapes)."""
    model.eval()
    n = int(data["label"].shape[0])
    out = []
    with torch.no_grad():
        for s in range(0, n, chunk):
            out.append(torch.sigmoid(model({k: data[k][s:s + chunk] for k in names}).logits.float()))
    return torch.cat(out).numpy()


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def result_record(pc: ModuleType, model: str, n_train: int, timing: Mapping[str, Any], mets: Mapping[str, float],
                  notes: str, epochs: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    """One results line with the fields of the peers' `common.write_result`, "peer": "recsys"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("recsys")
    except PackageNotFoundError:
        ours = "unknown"
    rec: dict[str, Any] = {
        "peer": "recsys", "peer_version": ours, "model": model.upper(),
        "epochs": epochs if not timing["extrapolated"] else round(timing["steps"] / timing["steps_per_epoch"], 3),
        "train_samples": int(n_train), "samples_per_s": round(timing["samples_per_s"], 1),
        "epoch_wall_s": round(timing["epoch_wall_s"], 2), "peak_rss_mb": round(pc.peak_rss_mb(), 1),
        "test_auc": round(mets["test_auc"], 5), "test_gauc": round(mets["test_gauc"], 5),
        "test_logloss": round(mets["test_logloss"], 5), "notes": notes,
        "epoch_wall_s_each": [round(x, 2) for x in timing["epoch_wall_s_each"]],
        "extrapolated": timing["extrapolated"],
    }
    rec.update(timing.get("contention", {}))
    rec.update(extra)
    return rec


NOTES = {
    "base": "recsys Base: item+cat emb 16 (Glorot), sum pooling over valid positions, DNN [200,80] PReLU on "
            "[q, pooled]",
    "din": "recsys DIN: activation unit [64,32] on [q,k,q-k,q*k] (first layer split into query/key terms), "
           "padding masked, no softmax; DNN [200,80] on [q,pooled,pooled*q]",
    "dien": "recsys DIEN: GRU extractor (+ aux loss alpha 1.0 on common.add_neg_history negatives when the "
            "aux_loss option is on) + AUGRU; DNN [200,80]",
    "dsin": "recsys DSIN: sessions by common.sessions (30-min gap, 5 x 10), bias encoding, self-attention, Bi-LSTM, "
            "activation units; DNN [200,80]",
}


def model_options(model_name: str, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The options the pipeline ships for `model_name` (conf/recsys.yaml `train.model_options`), updated
    with the command line's `--options` for it: the benchmark measures what `recsys train` builds."""
    from recsys.config import load_config

    return {**load_config().train.options_of(model_name), **overrides.get(model_name, {})}


def run_one(model_name: str, out: Path, run_id: str, *, epochs: int, batch: int, compile_mode: str,
            max_batches: int | None = None, threads: int = 2, peers_dir: Path = PEERS_DIR,
            options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train and test one of our models on the protocol data; append its line to `out`; return it."""
    from recsys.models import MODELS, build_model

    if model_name not in MODELS:
        raise KeyError(f"model {model_name!r} is not in recsys.models.MODELS ({', '.join(sorted(MODELS))})")
    pc = peers_common(peers_dir)
    pc.set_seed(pc.SEED, threads=threads)
    meta = pc.meta()
    fmap = feature_map(meta, model_name)
    names = tuple(f["name"] for f in fmap["features"]) + ("history_length",)
    tr = protocol_arrays(pc, "train", model_name, meta)
    te = protocol_arrays(pc, "test", model_name, meta)
    to_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tr.items() if k in names}
    to_t["label"] = torch.from_numpy(tr["label"]).float()
    te_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in te.items() if k in names}
    te_t["label"] = torch.from_numpy(te["label"]).float()
    n = int(to_t["label"].shape[0])
    del tr

    options = dict(options or {})
    model = build_model(model_name, fmap, embed_dim=pc.EMB, attention_hidden=pc.ATT_MLP, mlp_hidden=pc.DNN,
                        **options)
    compiled = compile_mode == "on" or (compile_mode == "auto" and COMPILE_AUTO.get(model_name, False)
                                        and can_compile())
    timer = pc.StepTimer(n, batch=batch, max_batches=max_batches)
    with contextlib.suppress(pc.StepTimer.StopTraining):  # --max-batches: the timer stops the loop
        train(model, to_t, names, timer, epochs=epochs, batch=batch, lr=pc.LR, seed=pc.SEED, compiled=compiled)
    timing = timer.summary()
    mets = pc.metrics(te["label"], predict(model, te_t, names), te["user"])
    extra = {"run_id": run_id, "options": options, "compiled": compiled, "threads": threads, "batch": batch,
             "torch": torch.__version__, "git_sha": git_sha(), "loadavg": [round(x, 2) for x in os.getloadavg()],
             "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    notes = NOTES.get(model_name, f"recsys {model_name}") + f"; options {json.dumps(options, sort_keys=True)}"
    rec = result_record(pc, model_name, n, timing, mets, notes, epochs, extra)
    append_lines(out, [rec])
    print("RESULT", json.dumps(rec), flush=True)
    return rec


def append_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# ---------------------------------------------------------------- the peers, staged outside the read-only tree


def stage_peers(peers_dir: Path, venvs: Path) -> Path:
    """Copy the peer runners to `venvs/scripts/bench/peers` (the shared tree is read-only and
    run_recbole.py reads the ratings at HERE/../../shared/data) and link the data there."""
    stage = venvs / "scripts" / "bench" / "peers"
    stage.mkdir(parents=True, exist_ok=True)
    for f in peers_dir.glob("*.py"):
        shutil.copy2(f, stage / f.name)
    data_link = venvs / "scripts" / "shared" / "data"
    data_link.parent.mkdir(parents=True, exist_ok=True)
    if not data_link.exists():
        data_link.symlink_to((peers_dir / ".." / ".." / "data").resolve())
    return stage


# The stored FuxiCTR model_zoo DIEN (58e2696) defines `add_loss(self, inputs)` and re-runs forward in it, but
# fuxictr 2.3.10's `compute_loss` calls `add_loss(return_dict, y_true)`: the run crashed on its first batch
# (runs s3-final, s4-final). The staged copy takes the library's arguments; the loss it computes (BCE on
# y_pred, plus the auxiliary term only when aux_loss_alpha > 0, which the runner leaves at 0) is unchanged.
FUXICTR_DIEN_OLD = """    def add_loss(self, inputs):
        y_true = self.get_labels(inputs)
        return_dict = self.forward(inputs)
"""
FUXICTR_DIEN_NEW = """    def add_loss(self, return_dict, y_true):
"""
FUXICTR_ZOO_ADAPTED = "DIEN.add_loss(inputs) -> add_loss(return_dict, y_true), the signature fuxictr 2.3.10 calls"


def stage_fuxictr_zoo(zoo: Path, stage: Path) -> tuple[Path, str | None]:
    """The zoo to run: `zoo` itself, or a copy under `stage` whose DIEN takes fuxictr 2.3.10's `add_loss`
    arguments (FUXICTR_DIEN_OLD -> FUXICTR_DIEN_NEW). Returns (zoo path, what was adapted or None)."""
    dien = zoo / "DIEN" / "src" / "DIEN.py"
    source = dien.read_text() if dien.is_file() else ""
    if FUXICTR_DIEN_OLD not in source:
        return zoo, None
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(zoo, stage)
    (stage / "DIEN" / "src" / "DIEN.py").write_text(source.replace(FUXICTR_DIEN_OLD, FUXICTR_DIEN_NEW))
    return stage, FUXICTR_ZOO_ADAPTED


def run_peers(run_id: str, out: Path, log_dir: Path, dien_max_batches: int, venvs: Path = PEERS_VENVS,
              peers_dir: Path = PEERS_DIR, only: tuple[str, ...] = (),
              max_batches: int | None = None) -> list[dict[str, Any]]:
    """Run every peer runner whose venv exists (sequentially); append their lines to `out`.

    `dien_max_batches` > 0 stops the slow DIENs early (run_all.sh's rule); `max_batches` stops every runner
    that takes `--max-batches` (all but torch_ref) for a quick, speed-only run.
    """
    missing = sorted({v for _, v, *_ in PEER_RUNS if not (venvs / v / "bin" / "python").exists()})
    if missing:
        print(f"SKIP peers without a venv under {venvs}: {', '.join(missing)} "
              f"(build them: PEERS_VENVS={venvs} bash {peers_dir}/setup_venvs.sh)", flush=True)
    stage = stage_peers(peers_dir, venvs)
    zoo, zoo_adapted = stage_fuxictr_zoo(Path(os.environ.get("FUXICTR_MODEL_ZOO", venvs / "FuxiCTR" / "model_zoo")),
                                         venvs / "scripts" / "fuxictr_model_zoo")
    if zoo_adapted:
        print(f"fuxictr model_zoo staged at {zoo}: {zoo_adapted}", flush=True)
    zoo_commit = zoo / "COMMIT"  # where the zoo came from, if recorded (copied with a staged zoo)
    log_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for name, venv, script, args, is_dien in PEER_RUNS:
        python = venvs / venv / "bin" / "python"
        if not python.exists() or (only and name not in only):
            continue
        argv = [str(python), str(stage / script), *args]
        if max_batches and venv != "ref":  # run_torch_ref.py has no --max-batches
            argv += ["--max-batches", str(max_batches)]
        elif is_dien and dien_max_batches > 0:
            argv += ["--max-batches", str(dien_max_batches)]
        tmp = log_dir / f"{run_id}_{name}.jsonl"
        env = dict(os.environ, PEERS_RESULTS=str(tmp), PEERS_DATA=os.environ.get("PEERS_DATA", "/tmp/peers/data"),
                   FUXICTR_MODEL_ZOO=str(zoo))
        print(f"== {name} ({time.strftime('%H:%M:%S')})", flush=True)
        t0 = time.time()
        with open(log_dir / f"{run_id}_{name}.log", "w") as log:
            rc = subprocess.run(argv, cwd=stage, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        lines = [json.loads(x) for x in tmp.read_text().splitlines() if x.strip()] if tmp.exists() else []
        for r in lines:
            r.update(run_id=run_id, loadavg=[round(x, 2) for x in os.getloadavg()])
            if r["peer"] == "fuxictr" and zoo_commit.is_file():
                r["model_zoo_commit"] = zoo_commit.read_text().strip()
            if r["peer"] == "fuxictr" and r["model"] == "DIEN" and zoo_adapted:
                r["model_zoo_adapted"] = zoo_adapted
        append_lines(out, lines)
        records += lines
        status = "ok" if lines else ("SKIP/FAILED, see " + str(log_dir / f"{run_id}_{name}.log"))
        print(f"   rc={rc} {time.time() - t0:.0f}s {status}", flush=True)
    return records


# ---------------------------------------------------------------- summary of one run


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios within one run: our DIN / fastest peer DIN and / torch_ref, our DIEN / fastest peer DIEN,
    DSIN / our DIN; GAUCs beside the best peer's (full runs only); peak RSS."""
    ours = {r["model"]: r for r in records if r["peer"] == "recsys"}
    peers = [r for r in records if r["peer"] != "recsys"]

    def fastest(model: str, exclude: tuple[str, ...] = ()) -> dict[str, Any] | None:
        c = [r for r in peers if r["model"] == model and r["peer"] not in exclude]
        return max(c, key=lambda r: r["samples_per_s"]) if c else None

    def best_gauc(model: str) -> dict[str, Any] | None:
        c = [r for r in peers if r["model"] == model and not r["extrapolated"]]
        return max(c, key=lambda r: r["test_gauc"]) if c else None

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        return round(a["samples_per_s"] / b["samples_per_s"], 2) if a and b else None

    din, dien, dsin = ours.get("DIN"), ours.get("DIEN"), ours.get("DSIN")
    peer_din, peer_dien = fastest("DIN", exclude=("torch_ref",)), fastest("DIEN")
    torch_ref = next((r for r in peers if r["peer"] == "torch_ref" and r["model"] == "DIN"), None)
    bd, bdi = best_gauc("DIN"), best_gauc("DIEN")
    return {
        "din_over_fastest_peer_din": ratio(din, peer_din),
        "fastest_peer_din": peer_din and peer_din["peer"],
        "din_over_torch_ref": ratio(din, torch_ref),
        "dien_over_fastest_peer_dien": ratio(dien, peer_dien),
        "fastest_peer_dien": peer_dien and peer_dien["peer"],
        "dsin_over_din": ratio(dsin, din),
        "din_gauc_minus_best_peer": round(din["test_gauc"] - bd["test_gauc"], 4) if din and bd else None,
        "best_peer_din_gauc": bd and f'{bd["peer"]} {bd["test_gauc"]}',
        "dien_gauc_minus_best_peer": round(dien["test_gauc"] - bdi["test_gauc"], 4) if dien and bdi else None,
        "best_peer_dien_gauc": bdi and f'{bdi["peer"]} {bdi["test_gauc"]}',
        "max_peak_rss_mb_ours": max((r["peak_rss_mb"] for r in ours.values()), default=None),
    }


def print_table(records: list[dict[str, Any]]) -> None:
    cols = ("peer", "model", "samples_per_s", "epoch_wall_s", "peak_rss_mb", "test_auc", "test_gauc",
            "test_logloss", "epochs", "cpu_per_wall", "loadavg_1m_start", "loadavg_1m_end")
    print(" | ".join(cols))
    for r in records:
        print(" | ".join(str(r.get(c)) for c in cols))


def read_run(path: Path, run_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if r.get("run_id") == run_id]


def ensure_data(peers_dir: Path) -> None:
    """Run the peers' prepare.py (this interpreter) when the prepared samples are missing."""
    data = Path(os.environ.get("PEERS_DATA", "/tmp/peers/data"))
    if (data / "meta.json").is_file() and (data / "train.parquet").is_file():
        return
    ml = (peers_dir / ".." / ".." / "data" / "ml-100k").resolve()
    if not ml.is_dir():
        raise SystemExit(f"MovieLens-100K not found at {ml}: the benchmark needs ../shared/data/ml-100k")
    subprocess.run([sys.executable, str(peers_dir / "prepare.py"), "--data", str(ml), "--out", str(data)], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(OUR_MODELS), help="comma-separated; absent ones are skipped")
    ap.add_argument("--peers", action="store_true", help="also run the peer libraries (their venvs) in this run")
    ap.add_argument("--peer-only", default="", help="comma-separated peer run names (e.g. torch_ref_DIN)")
    ap.add_argument("--dien-max-batches", type=int, default=int(os.environ.get("DIEN_MAX_BATCHES", "200")),
                    help="run_all.sh rule for the slow peer DIENs (0 = full)")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--max-batches", type=int, default=None,
                    help="stop our models after N batches (speed only: epoch time extrapolated, partial metrics)")
    ap.add_argument("--peer-max-batches", type=int, default=None,
                    help="stop every peer runner but torch_ref after N batches (speed only)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the protocol: 2)")
    ap.add_argument("--options", type=json.loads, default={},
                    help='JSON model -> keyword arguments over conf/recsys.yaml train.model_options, '
                         'e.g. \'{"din": {"batch_norm": false}}\'')
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one model
    ap.add_argument("--summary", default=None, metavar="RUN_ID", help="print the summary of a recorded run")
    args = ap.parse_args(argv)
    if args.summary:
        recs = read_run(args.out, args.summary)
        print_table(recs)
        print(json.dumps(summarize(recs), indent=1))
        return 0
    run_id = args.run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if args.one:
        pc = peers_common()
        run_one(args.one, args.out, run_id, epochs=pc.EPOCHS, batch=pc.BATCH, compile_mode=args.compile,
                max_batches=args.max_batches, options=model_options(args.one, args.options), threads=args.threads)
        return 0
    ensure_data(PEERS_DIR)
    from recsys.models import MODELS

    print(f"run_id {run_id}  loadavg {os.getloadavg()}", flush=True)
    failed = []
    for name in [m for m in args.models.split(",") if m]:
        if name not in MODELS:
            print(f"SKIP recsys {name}: not in recsys.models.MODELS yet", flush=True)
            continue
        print(f"== recsys {name} ({time.strftime('%H:%M:%S')})", flush=True)
        cmd = [sys.executable, __file__, "--one", name, "--run-id", run_id, "--out", str(args.out),
               "--compile", args.compile, "--options", json.dumps(args.options), "--threads", str(args.threads)]
        if args.max_batches:
            cmd += ["--max-batches", str(args.max_batches)]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            failed.append(name)
    if args.peers:
        log_dir = Path(os.environ.get("RECSYS_HOME", ROOT / "var")) / "bench" / "logs"
        only = tuple(x for x in args.peer_only.split(",") if x)
        run_peers(run_id, args.out, log_dir, args.dien_max_batches, only=only, max_batches=args.peer_max_batches)
    else:
        print(f"peers not run (add --peers, or `make bench-models PEERS=1`; venvs under {PEERS_VENVS})", flush=True)
    recs = read_run(args.out, run_id)
    print_table(recs)
    print(json.dumps(summarize(recs), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
