"""bench/models.py on a tiny synthetic dataset in the peer protocol's format (no timing asserts).

The runner imports the peers' common.py from ../shared/bench/peers; the tests skip when it is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.bench_scripts import load_bench

N_ITEMS, N_CATS, N_USERS, MAX_LEN = 60, 5, 10, 50


bm = load_bench("models")
pytestmark = pytest.mark.skipif(not (bm.PEERS_DIR / "common.py").is_file(),
                                reason=f"peer benchmark (common.py) not at {bm.PEERS_DIR}")


def _write_protocol_data(out: Path, seed: int = 0) -> None:
    """prepare.py's format: per user a time-ordered item sequence; every position t >= 1 gives a
    positive and a negative sharing the history; the last position is the test pair."""
    rng = np.random.default_rng(seed)
    item_cat = np.concatenate([[0], rng.integers(1, N_CATS + 1, N_ITEMS)])
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for u in range(1, N_USERS + 1):
        n = int(rng.integers(12, 40))  # > 20 batches of 16 in total, histories < 40
        its = rng.integers(1, N_ITEMS + 1, n)
        ts = np.cumsum(rng.choice([60, 4000], n))  # gaps over 30 min start new DSIN sessions
        for t in range(1, n):
            lo = max(0, t - MAX_LEN)
            h = its[lo:t]
            base = dict(user=u, raw_user_id=u, age=1, gender=1, occupation=1, hist_item=h.tolist(),
                        hist_cat=item_cat[h].tolist(), hist_ts=ts[lo:t].tolist(), seq_len=t - lo,
                        target_ts=int(ts[t]))
            split = "test" if t == n - 1 else "train"
            neg = int(rng.integers(1, N_ITEMS + 1))
            rows[split].append(dict(base, item=int(its[t]), cat=int(item_cat[its[t]]), label=1))
            rows[split].append(dict(base, item=neg, cat=int(item_cat[neg]), label=0))
    out.mkdir(parents=True, exist_ok=True)
    for split, r in rows.items():
        pd.DataFrame(r).to_parquet(out / f"{split}.parquet", index=False)
    meta = {"item_vocab": N_ITEMS + 1, "cat_vocab": N_CATS + 1, "n_items": N_ITEMS, "item_cat": item_cat.tolist()}
    (out / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    pc = bm.peers_common()
    _write_protocol_data(tmp_path / "data")
    monkeypatch.setattr(pc, "DATA", str(tmp_path / "data"))
    monkeypatch.setattr(pc, "RESULTS", str(tmp_path / "peer_results.jsonl"))
    return pc


def _run(model: str, out: Path, run_id: str = "t1") -> dict[str, Any]:
    # one thread: on a shared, oversubscribed test machine two OpenMP threads mostly wait for each other
    return bm.run_one(model, out, run_id, epochs=1, batch=16, compile_mode="off", threads=1)


def _peer_fields(pc: Any) -> set[str]:
    """The keys the peers' write_result produces (fake timing and metrics)."""
    timing = {"extrapolated": False, "steps": 1, "steps_per_epoch": 1, "samples_per_s": 1.0, "epoch_wall_s": 1.0,
              "epoch_wall_s_each": [1.0], "contention": {"cpu_per_wall": 1.0, "loadavg_1m_start": 0.0}}
    mets = {"test_auc": 0.5, "test_gauc": 0.5, "test_logloss": 0.7}
    return set(pc.write_result("x", "0", "DIN", 1, timing, mets, "").keys())


def test_feature_maps_are_valid_for_every_model() -> None:
    from recsys.models import FeatureMap

    meta = {"item_vocab": 100, "cat_vocab": 10}
    for model in bm.OUR_MODELS:
        fmap = FeatureMap.from_dict(bm.feature_map(meta, model))
        roles = {f.role for f in fmap.features}
        assert ("negative_history" in roles) == (model == "dien")
        assert ("sessions" in roles) == (model == "dsin") and ("history" in roles) == (model != "dsin")


def test_din_run_appends_one_line_with_the_peer_fields(protocol: Any, tmp_path: Path) -> None:
    out = tmp_path / "models.jsonl"
    rec = _run("din", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == [rec]
    assert _peer_fields(protocol) <= set(rec)
    assert rec["peer"] == "recsys" and rec["model"] == "DIN" and rec["run_id"] == "t1"
    n_train = len(pd.read_parquet(Path(protocol.DATA) / "train.parquet"))
    assert rec["train_samples"] == n_train and rec["epochs"] == 1 and rec["extrapolated"] is False
    assert len(rec["loadavg"]) == 3 and rec["samples_per_s"] > 0 and rec["peak_rss_mb"] > 0
    assert 0.0 <= rec["test_auc"] <= 1.0 and 0.0 <= rec["test_gauc"] <= 1.0 and rec["test_logloss"] > 0


def test_same_seed_gives_the_same_metrics(protocol: Any, tmp_path: Path) -> None:
    a = _run("base", tmp_path / "a.jsonl")
    b = _run("base", tmp_path / "b.jsonl")
    assert (a["test_auc"], a["test_logloss"]) == (b["test_auc"], b["test_logloss"])


@pytest.mark.parametrize("model", ["dien", "dsin"])
def test_dien_and_dsin_run_on_the_protocol(protocol: Any, tmp_path: Path, model: str) -> None:
    rec = _run(model, tmp_path / "m.jsonl")
    assert rec["model"] == model.upper() and np.isfinite(rec["test_logloss"])


def test_session_arrays_follow_the_contract_and_are_cached(protocol: Any) -> None:
    d = protocol.load("train")
    items, cats = bm.session_arrays(protocol, "train", d)
    assert items.shape == (len(d["label"]), bm.MAX_SESSIONS, bm.SESSION_LEN) and cats.shape == items.shape
    n_valid = (items != 0).sum(axis=(1, 2))
    assert (n_valid <= d["seq_len"]).all() and (n_valid[d["seq_len"] > 0] > 0).all()
    # the newest behaviour of the history is the last valid id of the last session
    b = int(np.argmax(d["seq_len"]))
    last = items[b, -1][items[b, -1] != 0][-1] if (items[b, -1] != 0).any() else None
    assert last == d["hist_item"][b, d["seq_len"][b] - 1]
    cached, _ = bm.session_arrays(protocol, "train", d)
    assert np.array_equal(cached, items) and any(Path(protocol.DATA).glob("sessions_train_*.npz"))


def test_summary_ratios_within_a_run() -> None:
    def r(peer: str, model: str, sps: float, gauc: float, extrapolated: bool = False) -> dict[str, Any]:
        return {"peer": peer, "model": model, "samples_per_s": sps, "test_gauc": gauc,
                "extrapolated": extrapolated, "peak_rss_mb": 900.0}

    s = bm.summarize([r("recsys", "DIN", 20000, 0.86), r("recsys", "DIEN", 5000, 0.88), r("recsys", "DSIN", 8000, 0.8),
                      r("torch_ref", "DIN", 10000, 0.83), r("fuxictr", "DIN", 8000, 0.845),
                      r("recbole", "DIN", 2500, 0.859), r("fuxictr", "DIEN", 2000, 0.887),
                      r("rechub", "DIEN", 2500, 0.70, extrapolated=True)])
    assert s["din_over_fastest_peer_din"] == 2.5 and s["fastest_peer_din"] == "fuxictr"
    assert s["din_over_torch_ref"] == 2.0 and s["dsin_over_din"] == 0.4
    # partial (extrapolated) runs count for speed
    assert s["dien_over_fastest_peer_dien"] == 2.0 and s["fastest_peer_dien"] == "rechub"
    assert s["din_gauc_minus_best_peer"] == pytest.approx(0.001)  # recbole 0.859
    assert s["dien_gauc_minus_best_peer"] == pytest.approx(-0.007)  # fuxictr; partial rechub excluded


def test_missing_peer_venvs_are_skipped_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models.jsonl"
    recs = bm.run_peers("t1", out, tmp_path / "logs", 200, venvs=tmp_path / "venvs")
    assert recs == [] and not out.exists()
    assert "SKIP peers without a venv" in capsys.readouterr().out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_fuxictr_dien_with_the_old_add_loss_runs_from_an_adapted_copy(tmp_path: Path) -> None:
    """The stored zoo DIEN takes add_loss(inputs); fuxictr 2.3.10 calls add_loss(return_dict, y_true)."""
    zoo = tmp_path / "model_zoo"
    (zoo / "DIEN" / "src").mkdir(parents=True)
    (zoo / "DIN" / "src").mkdir(parents=True)
    body = "        loss = self.loss_fn(return_dict['y_pred'], y_true)\n        return loss\n"
    original = "class DIEN:\n" + bm.FUXICTR_DIEN_OLD + body
    (zoo / "DIEN" / "src" / "DIEN.py").write_text(original)
    (zoo / "DIN" / "src" / "DIN.py").write_text("class DIN: pass\n")

    staged, adapted = bm.stage_fuxictr_zoo(zoo, tmp_path / "stage")

    assert staged == tmp_path / "stage" and adapted == bm.FUXICTR_ZOO_ADAPTED
    assert (staged / "DIEN" / "src" / "DIEN.py").read_text() == "class DIEN:\n" + bm.FUXICTR_DIEN_NEW + body
    assert (staged / "DIN" / "src" / "DIN.py").read_text() == "class DIN: pass\n"
    assert (zoo / "DIEN" / "src" / "DIEN.py").read_text() == original  # the user's zoo is left as it is
    # a zoo that already takes the library's arguments runs as it is
    (zoo / "DIEN" / "src" / "DIEN.py").write_text("class DIEN:\n" + bm.FUXICTR_DIEN_NEW + body)
    assert bm.stage_fuxictr_zoo(zoo, tmp_path / "stage2") == (zoo, None)
    assert not (tmp_path / "stage2").exists()
