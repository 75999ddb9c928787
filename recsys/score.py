"""Stage 6: rank every user's candidates of ds with the @champion model -> marts.recommendations.

The champion is rebuilt from its registered artifacts (weights loaded with weights_only=True). The
scoring frame holds the candidates of ds with the user's history and profile as of the end of ds;
context features are unknown at scoring time (see feature_store/retrieval.py). Candidates are grouped
per user and scored with `model.score_candidates(users, candidates)` in batches of whole users under
`torch.inference_mode`, so the user side (histories, profile) is computed once per user, not once per
pair (ids the champion's vocabulary does not know are fed as unknown). Each user's candidates are
ranked by (score desc, item_id asc), and the top `score.top_k` per user replace ds's partition inside
one transaction: readers see all of ds or none of it; a failure leaves the previous rows.

Refusals: no model serves ds yet (NoChampionError); the model was trained with a feature map the
feature store no longer serves (FeatureMapMismatchError). An empty candidate set publishes nothing
for ds (the partition is emptied) and logs a warning.

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

from feature_store.retrieval import Frame, clamp_to_vocab, feature_map_dict, scoring_frame
from feature_store.spec import load_spec
from recsys.config import Config
from recsys.ingest import validate_ds
from recsys.registry import LoadedModel, NoChampionError, load_champion, load_version
from recsys.train import _autocast, model_inputs, resolve_device, to_tensors
from recsys.warehouse import connect, replace_partition, table_exists, transaction

__all__ = ["FeatureMapMismatchError", "NoChampionError", "ScoreResult", "score", "score_frame"]

log = logging.getLogger(__name__)

EXPLAIN_ITEMS = 3
EXPLAIN_POOL = 20  # strongest positions kept per candidate; the first 3 distinct items among them are named
EXPLAIN_HISTORY = "item_id_history"  # raw history whose item ids the explanation names
# (user, candidate) pairs per model call, in whole users (C=200 -> 5 users). Small calls keep DIN's
# [users, T, C, H] attention activations in cache: bench/scoring.py, 2 threads, quiet machine, 100k pairs:
# DIN 2.04 s at 16384 pairs/call, 1.39 s at 2048, 0.53 s at 1024; DIEN 5.6 -> 3.8 s; DSIN 1.35 -> 0.48 s.
SCORE_PAIRS = 1024


class FeatureMapMismatchError(RuntimeError):
    """The serving model's feature map does not match what the feature store serves now."""

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


def user_groups(user_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows grouped by user: (rows sorted by user [N], start offset of each user [U + 1]).

    Args:
        user_index: [N] row -> position in the frame's user arrays (0..U-1; a user may have no row).
    """
    order = np.argsort(user_index, kind="stable")
    counts = np.bincount(user_index, minlength=int(user_index.max()) + 1 if len(user_index) else 0)
    return order, np.r_[0, np.cumsum(counts)]


def candidate_matrix(order: np.ndarray, offsets: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `users`' candidates as a padded matrix.

    Args:
        order, offsets: from `user_groups`. users: [U] user positions.
    Returns:
        (rows [U, C] int64, valid [U, C] bool) with C = the most candidates any of these users has;
        padding repeats the user's first row (a valid input whose score is ignored).
    """
    starts, counts = offsets[users], offsets[users + 1] - offsets[users]
    width = int(counts.max()) if len(users) else 0
    slot = np.arange(width)[None, :]
    valid = slot < counts[:, None]
    rows = order[starts[:, None] + np.where(valid, slot, 0)]
    return rows, valid


@dataclass(frozen=True)
class _Split:
    """Model inputs split into the user side ([U, ...], computed once per user) and the candidate side [U, C].

    `sequences`: user-side [U, T] behaviour lists (0-padded at the end), cut to the batch's longest
    history before they reach the model.
    """

    user_names: tuple[str, ...]
    candidate_names: tuple[str, ...]
    sequences: frozenset[str]


def _split_inputs(frame: Frame, fmap: dict) -> _Split:
    names = model_inputs(fmap)
    missing = [n for n in names if n not in frame.columns and n not in frame.user_columns]
    if missing:
        raise FeatureMapMismatchError(f"the scoring frame lacks the model inputs {missing}")
    sequences = frozenset(f["name"] for f in fmap["features"] if f["kind"] == "sequence")
    return _Split(tuple(n for n in names if n in frame.user_columns), tuple(n for n in names if n in frame.columns),
                  sequences & set(frame.user_columns))


def _user_batch(frame: Frame, split: _Split, fmap: dict, users: np.ndarray, rows: np.ndarray, width: int,
                device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Tensors for `score_candidates`: user side [U, ...] and candidate side [U, C] (ids clamped to the vocab).

    Sequences are cut to `width` positions: beyond every user's history they are padding, which the
    models mask, so a batch of short histories does not pay for T attention positions per pair.
    """
    user_side = {n: frame.user_columns[n][users] for n in split.user_names}
    user_side.update({n: user_side[n][:, :width] for n in split.sequences})
    user_side = clamp_to_vocab(user_side, fmap)
    cand_side = clamp_to_vocab({n: frame.columns[n][rows] for n in split.candidate_names}, fmap)
    return to_tensors(user_side, device), to_tensors(cand_side, device)


def _pairs_per_batch(n_candidates: int, pairs: int = SCORE_PAIRS) -> int:
    return max(1, pairs // max(n_candidates, 1))


@dataclass
class Scored:
    """The top-K of every user: row indices [M] (user, rank order), ranks [M], probabilities [M] and
    ranked history positions [M, EXPLAIN_POOL] (-1 = none) for the explanations."""

    rows: np.ndarray
    ranks: np.ndarray
    scores: np.ndarray
    positions: np.ndarray


def score_frame(model: torch.nn.Module, frame: Frame, fmap: dict, device: torch.device, top_k: int,
                pairs_per_batch: int = SCORE_PAIRS) -> Scored:
    """Rank every user's candidates with `model.score_candidates`, keeping each user's top_k.

    Users are scored in batches of about `pairs_per_batch` (user, candidate) pairs; the model sees
    the user side once per user ([U, T] histories) and the candidates as [U, C]. Within a user, ties
    are broken by item_id. Only the top-K rows keep their attention (for explanations).
    """
    if len(frame) == 0:
        return Scored(*(np.zeros(0, dtype=t) for t in (np.int64, np.int32, np.float32)),
                      np.zeros((0, EXPLAIN_POOL), dtype=np.int16))
    split = _split_inputs(frame, fmap)
    order, offsets = user_groups(frame.user_index)
    present = np.flatnonzero(np.diff(offsets) > 0)  # users of a filtered frame may have no rows left
    lengths = frame.user_columns[fmap["length"]]
    present = present[np.argsort(lengths[present], kind="stable")]  # similar history lengths share a batch
    step = _pairs_per_batch(int(np.diff(offsets).max()), pairs_per_batch)
    parts: list[tuple[np.ndarray, ...]] = []
    model.eval()
    with torch.inference_mode():
        for lo in range(0, len(present), step):
            users = present[lo:lo + step]
            rows, valid = candidate_matrix(order, offsets, users)
            width = max(int(lengths[users].max()), 1)
            user_side, cand_side = _user_batch(frame, split, fmap, users, rows, width, device)
            with _autocast(device):
                out = model.score_candidates(user_side, cand_side)
            probs = torch.sigmoid(out.logits.float()).cpu().numpy()  # [U, C]
            parts.append(_top_of_batch(frame, users, rows, valid, probs, out.attention, lengths, width, top_k))
    rows, ranks, probs, positions = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((ranks, frame.user_index[rows]))  # back to (user, rank) order
    return Scored(rows[order], ranks[order], probs[order], positions[order])


def _top_of_batch(frame: Frame, users: np.ndarray, rows: np.ndarray, valid: np.ndarray, probs: np.ndarray,
                  attention: torch.Tensor | None, lengths: np.ndarray, width: int,
                  top_k: int) -> tuple[np.ndarray, ...]:
    """Each user's top_k of one batch: (rows [M], ranks [M], probs [M], positions [M, EXPLAIN_POOL])."""
    items = frame.keys["item_id"][rows]  # [U, C]
    # (score desc, item_id asc); padding sorts last
    order = np.lexsort((items, -np.where(valid, probs, -np.inf).astype(np.float64)), axis=1)[:, :top_k]
    keep = np.take_along_axis(valid, order, axis=1)  # [U, K']
    user_pos, slot = np.nonzero(keep)
    col = order[user_pos, slot]
    att = None
    if attention is not None and attention.shape[-1] == width and EXPLAIN_HISTORY in frame.user_keys:
        # one weight per (cut) history position; anything else (per session) falls back to recency
        att = attention[torch.from_numpy(user_pos), torch.from_numpy(col)].float().cpu().numpy()  # [M, T]
    positions = np.full((len(col), EXPLAIN_POOL), -1, dtype=np.int16)
    ranked = ranked_positions(att, lengths[users[user_pos]])
    positions[:, :ranked.shape[1]] = ranked
    return rows[user_pos, col], (slot + 1).astype(np.int32), probs[user_pos, col], positions


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
    """EXPLAIN_ITEMS nullable int64 columns: distinct raw item ids at the strongest history positions.

    Args:
        rows: [M] frame rows. positions: [M, EXPLAIN_POOL] ranked history positions of those rows.
    """
    if EXPLAIN_HISTORY not in frame.user_keys:
        return [pa.nulls(len(rows), pa.int64()) for _ in range(EXPLAIN_ITEMS)]
    history = frame.user_keys[EXPLAIN_HISTORY][frame.user_index[rows]]  # [M, T] raw ids
    ids, present = distinct_items(history, positions)
    return [pa.array(ids[:, j], mask=~present[:, j]) for j in range(EXPLAIN_ITEMS)]


def _top_table(frame: Frame, scored: Scored) -> pa.Table:
    rows = scored.rows
    e1, e2, e3 = _explained_items(frame, rows, scored.positions)
    return pa.table({"user_id": frame.keys["user_id"][rows], "rank": scored.ranks,
                     "item_id": frame.keys["item_id"][rows],
                     "score": scored.scores.astype(np.float64),
                     "candidate_source": pa.array(frame.keys["candidate_source"][rows], type=pa.string()),
                     "e1": e1, "e2": e2, "e3": e3})


def check_feature_map(model_map: dict, current_map: dict, version: str) -> None:
    """Refuse a model whose features differ from what the feature store serves now.

    Every model feature must exist today with the same kind, role, group and shape (max_len, target,
    ...); vocabulary sizes may differ (vocabularies are append-only; newer ids are fed as unknown).

    Raises:
        FeatureMapMismatchError: naming each differing feature and what differs.
    """
    current = {f["name"]: f for f in current_map["features"]}
    problems = []
    for f in model_map["features"]:
        now = current.get(f["name"])
        if now is None:
            problems.append(f"{f['name']}: not served by the feature store any more")
            continue
        diffs = [f"{k} {f.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(f) | set(now)) if f.get(k) != now.get(k)]
        if diffs:
            problems.append(f"{f['name']}: " + ", ".join(diffs))
    if model_map.get("length") != current_map.get("length"):
        problems.append(f"length key {model_map.get('length')!r} -> {current_map.get('length')!r}")
    if problems:
        raise FeatureMapMismatchError(f"model version {version} was trained with a different feature map than "
                                 f"feature_store/specs.yaml serves now; retrain it: " + "; ".join(problems))


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
    """Write ds's top-K recommendations per user with the model serving ds (replacing ds's rows).

    Raises:
        NoChampionError: no model serves ds yet (train and promote first); nothing is written.
        FeatureMapMismatchError: the model was trained on features the feature store no longer serves.
    """
    ds = validate_ds(ds)
    loaded = model_for(cfg, ds)
    torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg)
    loaded.model.to(device)
    fmap = loaded.feature_map.to_dict()
    spec = load_spec(cfg.paths.feature_specs)
    con = connect(cfg, read_only=False)
    try:
        check_feature_map(fmap, feature_map_dict(con, spec), loaded.version)
        frame = scoring_frame(con, ds, spec, raw_histories=(EXPLAIN_HISTORY,))
        if len(frame) == 0:
            log.warning("score ds=%s: marts.scoring_candidates has no rows for ds; publishing nothing", ds)
        scored = score_frame(loaded.model, frame, fmap, device, cfg.score.top_k)
        top = _top_table(frame, scored)
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
