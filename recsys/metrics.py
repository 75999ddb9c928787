"""Offline CTR metrics in vectorised numpy: AUC, GAUC (weighting named), logloss.

AUC is the Mann-Whitney statistic with tied scores sharing their average rank, so a tie between a
positive and a negative counts one half. GAUC (DIN paper) is `sum_u w_u * AUC_u / sum_u w_u` over
users having both classes; `w_u` is the user's number of samples ("impressions", as in the paper) or
1 ("users"). The weighting used travels with the result so every report can name it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

WEIGHTINGS = ("impressions", "users")


class GaucResult(NamedTuple):
    value: float  # NaN when no user has both a positive and a negative
    users_used: int  # users with both classes (the others are skipped)
    weighting: str  # "impressions" (w_u = the user's samples) or "users" (w_u = 1)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape[0]} vs {scores.shape[0]}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a ranking of NaN is undefined")
    return labels.astype(bool), scores


def _tie_group_ranks(sorted_keys: list[np.ndarray]) -> np.ndarray:
    """Average 0-based position of each element's tie group in an already sorted array.

    Args:
        sorted_keys: arrays [N] in sorted order; consecutive elements equal in all of them are tied.
    Returns:
        float64 [N]: for a group occupying positions s..e-1, (s + e - 1) / 2 for each of its elements.
    """
    n = sorted_keys[0].shape[0]
    same_as_previous = np.ones(max(n - 1, 0), dtype=bool)
    for key in sorted_keys:
        same_as_previous &= key[1:] == key[:-1]
    starts_group = np.concatenate([[True], ~same_as_previous])
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)
    last = np.append(first[1:], n) - 1
    return ((first + last) / 2.0)[group]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` [N] for binary `labels` [N]; ties count one half; NaN with only one class."""
    y, s = _check(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _tie_group_ranks([s[order]]) + 1.0  # 1-based average ranks in sorted order
    rank_sum = ranks[y[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, weighting: str = "impressions") -> GaucResult:
    """Per-user AUC averaged with weights `weighting`; users with a single class are skipped.

    One sort by (user, score), then grouped rank sums; no Python loop per user. With one positive and
    one negative per user it equals the share of users whose positive scores higher (ties count 1/2).

    Args:
        users: user key per sample [N] (any sortable dtype).
        labels: 0/1 [N]. scores: [N].
        weighting: "impressions" (w_u = the user's samples, the DIN paper) or "users" (w_u = 1).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown GAUC weighting {weighting!r}; choose one of {WEIGHTINGS}")
    y, s = _check(labels, scores)
    users = np.asarray(users).ravel()
    if users.shape != y.shape:
        raise ValueError(f"users and labels differ in length: {users.shape[0]} vs {y.shape[0]}")
    if y.size == 0:
        return GaucResult(float("nan"), 0, weighting)
    _, user = np.unique(users, return_inverse=True)
    user = user.ravel()
    order = np.lexsort((s, user))
    user, y, s = user[order], y[order], s[order]
    n_users = int(user[-1]) + 1
    counts = np.bincount(user, minlength=n_users)
    user_start = np.cumsum(counts) - counts  # first sorted position of each user
    ranks = _tie_group_ranks([user, s]) - user_start[user] + 1.0  # 1-based average rank within the user
    n_pos = np.bincount(user, weights=y, minlength=n_users)
    n_neg = counts - n_pos
    rank_sum = np.bincount(user, weights=np.where(y, ranks, 0.0), minlength=n_users)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return GaucResult(float("nan"), 0, weighting)
    per_user = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    weight = counts[valid].astype(np.float64) if weighting == "impressions" else np.ones(int(valid.sum()))
    return GaucResult(float((weight * per_user).sum() / weight.sum()), int(valid.sum()), weighting)


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities `probs` [N] (clipped to [eps, 1 - eps]) for `labels` [N]."""
    y, p = _check(labels, probs)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))
