"""Stage 6: rank every user's candidates of ds with the @champion model -> marts.recommendations.

The champion is rebuilt from its registered artifacts (weights loaded with weights_only=True). The
scoring frame holds the candidates of ds with the user's history and profile as of the end of ds;
context features are unknown at scoring time (see feature_store/retrieval.py). Candidates are scored
in fixed-size batches under `torch.inference_mode` (ids the champion's vocabulary does not know are
fed as unknown), ranked per user by (score desc, item_id asc), and the top `score.top_k` per user
replace ds's partition inside one transaction: readers see all of ds or none of it.

Explanation: the three distinct history items with the largest attention weight for that candidate,
as "because you viewed items 12, 7, 3" (item ids, strongest first). Models without attention (Base)
name the three most recent distinct items instead; users without history get no explanation (NULL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from feature_store.retrieval import Frame, scoring_frame
from feature_store.spec import load_spec
from recsys.config import Config
from recsys.ingest import validate_ds
from recsys.registry import LoadedModel, NoChampionError, load_champion, load_version
from recsys.train import predict_batches, resolve_device
from recsys.warehouse import connect, replace_partition, table_exists, transaction

__all__ = ["NoChampionError", "ScoreResult", "score"]

log = logging.getLogger(__name__)

EXPLAIN_ITEMS = 3
EXPLAIN_POOL = 20  # strongest positions kept per candidate; the first 3 distinct items among them are named
EXPLAIN_HISTORY = "item_id_history"  # raw history whose item ids the explanation names

INSERT_SQL = """
    SELECT CAST(? AS DATE) AS ds, user_id, rank, item_id, score, ? AS model_name, ? AS model_version,
           candidate_source,
           CASE WHEN e1 IS NULL THEN NULL
                ELSE 'because you viewed items ' || concat_ws(', ', e1, e2, e3) END AS explanation
    FROM scored_top ORDER BY user_id, rank"""


@dataclass(frozen=True)
class ScoreResult:
    rows: int
    users: int
    model_version: str


def ranked_positions(attention: np.ndarray | None, lengths: np.ndarray, width: int = EXPLAIN_POOL) -> np.ndarray:
    """Valid history positions of each row, strongest first (or most recent first without attention).

    Args:
        attention: [B, T] weights, or None (then recency decides).
        lengths: [B] valid history positions.
    Returns:
        int16 [B, W] with W = width (min(width, T) with attention), -1 past the valid positions.
    """
    rank = np.arange(width)[None, :]
    if attention is None:
        positions = lengths[:, None] - 1 - rank
        return np.where(positions >= 0, positions, -1).astype(np.int16)
    valid = np.arange(attention.shape[1])[None, :] < lengths[:, None]
    order = np.argsort(np.where(valid, -attention, np.inf), axis=1, kind="stable")[:, :width]  # ties: earlier first
    return np.where(rank[:, :order.shape[1]] < lengths[:, None], order, -1).astype(np.int16)


def distinct_items(history: np.ndarray, positions: np.ndarray, k: int = EXPLAIN_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """The first k distinct raw ids at `positions` (a user who viewed item 7 twice is told once).

    Args:
        history: raw ids [M, T]. positions: [M, W] from `ranked_positions`.
    Returns:
        (ids [M, k] int64, present [M, k] bool).
    """
    valid = positions >= 0
    items = np.take_along_axis(history, np.maximum(positions, 0).astype(np.int64), axis=1)  # [M, W]
    earlier = np.tril(np.ones((items.shape[1], items.shape[1]), dtype=bool), k=-1)  # [W, W]: j' < j
    repeated = ((items[:, :, None] == items[:, None, :]) & earlier & valid[:, None, :]).any(axis=2)
    keep = valid & ~repeated
    pick = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept ones first, still strongest first
    ids, present = np.take_along_axis(items, pick, axis=1), np.take_along_axis(keep, pick, axis=1)
    if ids.shape[1] < k:  # fewer positions than k (very short max_len)
        pad = k - ids.shape[1]
        ids, present = np.pad(ids, ((0, 0), (0, pad))), np.pad(present, ((0, 0), (0, pad)))
    return ids, present


def _score_all(loaded: LoadedModel, frame: Frame, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N] float32, ranked history positions [N, EXPLAIN_POOL] int16) for every candidate row."""
    fmap = loaded.feature_map.to_dict()
    lengths = frame[fmap["length"]]
    width = frame.user_columns[EXPLAIN_HISTORY].shape[1] if EXPLAIN_HISTORY in frame.user_columns else 0
    scores = np.zeros(len(frame), dtype=np.float32)
    positions = np.full((len(frame), EXPLAIN_POOL), -1, dtype=np.int16)
    for rows, probs, attention in predict_batches(loaded.model, frame, fmap, device):
        scores[rows] = probs
        if attention is not None and attention.shape[1] != width:
            attention = None  # not per history position (e.g. per session): fall back to recency
        ranked = ranked_positions(attention, lengths[rows])
        positions[rows, :ranked.shape[1]] = ranked
    return scores, positions


def rank_top_k(users: np.ndarray, items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each user's top k by (score desc, item_id asc) and their ranks 1..k.

    Returns:
        (row indices [M] ordered by user then rank, ranks [M] int32).
    """
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    order = np.lexsort((items, -scores.astype(np.float64), users))  # last key is the primary one
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    ranks = np.arange(len(order)) - np.repeat(starts, counts) + 1
    keep = ranks <= k
    return order[keep], ranks[keep].astype(np.int32)


def _explained_items(frame: Frame, rows: np.ndarray, positions: np.ndarray) -> list[pa.Array]:
    """EXPLAIN_ITEMS nullable int64 columns: distinct raw item ids at the strongest history positions."""
    if EXPLAIN_HISTORY not in frame.user_keys:
        return [pa.nulls(len(rows), pa.int64()) for _ in range(EXPLAIN_ITEMS)]
    history = frame.user_keys[EXPLAIN_HISTORY][frame.user_index[rows]]  # [M, T] raw ids
    ids, present = distinct_items(history, positions[rows])
    return [pa.array(ids[:, j], mask=~present[:, j]) for j in range(EXPLAIN_ITEMS)]


def _top_table(frame: Frame, scores: np.ndarray, positions: np.ndarray, top_k: int) -> pa.Table:
    rows, ranks = rank_top_k(frame.keys["user_id"], frame.keys["item_id"], scores, top_k)
    e1, e2, e3 = _explained_items(frame, rows, positions)
    return pa.table({"user_id": frame.keys["user_id"][rows], "rank": ranks, "item_id": frame.keys["item_id"][rows],
                     "score": scores[rows].astype(np.float64),
                     "candidate_source": pa.array(frame.keys["candidate_source"][rows], type=pa.string()),
                     "e1": e1, "e2": e2, "e3": e3})


def model_for(cfg: Config, ds: str) -> LoadedModel:
    """The model that serves ds: the promotion gate's choice for ds, else the live @champion.

    Using ds's own decision keeps a rerun of an old ds on the model that served it then, even after
    later days have moved the alias.
    """
    row = []
    if Path(cfg.paths.warehouse).exists():
        con = connect(cfg, read_only=True)
        try:
            if table_exists(con, "marts.model_promotions"):
                row = con.execute("SELECT champion_after FROM marts.model_promotions "
                                  "WHERE ds = ? AND registered_model = ?", [ds, cfg.mlflow.registered_model]).fetchall()
        finally:
            con.close()
    if row:
        return load_version(cfg, row[0][0])
    return load_champion(cfg)  # NoChampionError says to train and promote first


def score(cfg: Config, ds: str) -> ScoreResult:
    """Write ds's top-K recommendations per user with the model serving ds (replacing ds's rows)."""
    ds = validate_ds(ds)
    loaded = model_for(cfg, ds)
    torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg)
    loaded.model.to(device)
    con = connect(cfg, read_only=False)
    try:
        frame = scoring_frame(con, ds, load_spec(cfg.paths.feature_specs), raw_histories=(EXPLAIN_HISTORY,))
        if len(frame) == 0:
            log.warning("score ds=%s: marts.scoring_candidates has no rows for ds; publishing nothing", ds)
        scores, positions = _score_all(loaded, frame, device)
        top = _top_table(frame, scores, positions, cfg.score.top_k)
        con.register("scored_top", top)
        with transaction(con):
            rows = replace_partition(con, "marts.recommendations", ds, INSERT_SQL,
                                     [ds, loaded.model_name, loaded.version])
        con.unregister("scored_top")
    finally:
        con.close()
    users = int(len(np.unique(top.column("user_id").to_numpy()))) if rows else 0
    log.info("score ds=%s: %d rows for %d users with %s v%s", ds, rows, users, loaded.model_name, loaded.version)
    return ScoreResult(rows=rows, users=users, model_version=loaded.version)
