"""AUC / GAUC / logloss against golden values worked out by hand (no sklearn)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.metrics import GaucResult, auc, gauc, logloss


def test_auc_perfect_inverted_and_tied() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.full(4, 0.7)) == 0.5


def test_auc_ties_count_one_half() -> None:
    # positive 0.5 beats 0.1 (1) and ties 0.5 (1/2); positive 0.9 beats both negatives (2) -> 3.5 / 4
    assert auc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    # 3 positives x 2 negatives: wins 2 + 1.5 + 0 = 3.5 of 6
    assert auc([1, 1, 1, 0, 0], [0.9, 0.4, 0.1, 0.4, 0.3]) == pytest.approx(3.5 / 6)


def test_auc_single_class_is_nan_and_bad_input_raises() -> None:
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="length"):
        auc([0, 1], [0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.2, float("nan")])


def user_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User a: 4 samples, AUC 3/4; user b: 2 samples, AUC 0; user c: positives only (skipped)."""
    users = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.2, 0.7, 0.5, 0.6])
    return users, labels, scores


def test_gauc_weights_by_impressions_and_skips_one_class_users() -> None:
    result = gauc(*user_example())
    assert result == GaucResult(value=pytest.approx((4 * 0.75 + 2 * 0.0) / 6), users_used=2, weighting="impressions")


def test_gauc_user_weighting_is_named() -> None:
    result = gauc(*user_example(), weighting="users")
    assert result.weighting == "users" and result.value == pytest.approx(0.375) and result.users_used == 2
    with pytest.raises(ValueError, match="weighting"):
        gauc(*user_example(), weighting="clicks")


def test_gauc_ignores_row_order() -> None:
    users, labels, scores = user_example()
    order = np.random.default_rng(0).permutation(len(users))
    assert gauc(users[order], labels[order], scores[order]).value == pytest.approx(0.5)


def test_gauc_with_one_positive_and_one_negative_per_user_is_pairwise_accuracy() -> None:
    users = np.repeat(np.arange(5), 2)
    labels = np.tile([1, 0], 5)
    # users 0, 1, 2 rank the positive first, user 3 ties, user 4 inverts -> (3 + 0.5) / 5
    scores = np.array([0.9, 0.1, 0.6, 0.5, 0.3, 0.2, 0.4, 0.4, 0.1, 0.8])
    assert gauc(users, labels, scores).value == pytest.approx(0.7)


def test_gauc_ties_within_a_user_use_average_rank() -> None:
    # user 7: positive tied with one negative, above the other -> (1 + 0.5) / 2; user 9: all tied -> 0.5
    users = np.array([7, 7, 7, 9, 9, 9])
    labels = np.array([1, 0, 0, 0, 1, 1])
    scores = np.array([0.5, 0.5, 0.2, 0.3, 0.3, 0.3])
    assert gauc(users, labels, scores).value == pytest.approx((3 * 0.75 + 3 * 0.5) / 6)


def test_gauc_matches_per_user_auc_on_random_data() -> None:
    rng = np.random.default_rng(1)
    users, labels = rng.integers(0, 40, 2000), rng.integers(0, 2, 2000)
    scores = rng.integers(0, 8, 2000) / 8.0  # many ties
    total, weight, used = 0.0, 0, 0
    for u in np.unique(users):  # reference: a loop over users, fine in a test
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            total, weight, used = total + m.sum() * auc(labels[m], scores[m]), weight + m.sum(), used + 1
    result = gauc(users, labels, scores)
    assert result.value == pytest.approx(total / weight) and result.users_used == used


def test_gauc_without_usable_users_is_nan() -> None:
    result = gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    assert math.isnan(result.value) and result.users_used == 0


def test_logloss_golden_values_and_clipping() -> None:
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    assert logloss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-7))
