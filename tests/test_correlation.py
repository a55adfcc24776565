"""Correlation helpers on hand-computed numbers (and scipy's Kendall tau where it applies)."""

from __future__ import annotations

import math

import pytest
from scipy.stats import kendalltau

from qradaptor.correlation import kendall_tau, pearson, spearman


def test_kendall_tau_counts_concordant_and_discordant_pairs() -> None:
    # 6 pairs, only (2, 3) vs (3, 2) discordant: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_kendall_tau_b_corrects_for_ties_like_scipy() -> None:
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    # C = 4, D = 0, one pair tied in x only, one in y only: 4 / sqrt(5 * 5).
    assert kendall_tau(x, y) == pytest.approx(0.8)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic)
    x2, y2 = [0.3, 4.1, 2.2, 2.2, 9.0, -1.0, 5.5], [2.0, 1.0, 3.0, 3.0, 8.0, 0.5, 1.0]
    assert kendall_tau(x2, y2) == pytest.approx(kendalltau(x2, y2).statistic)


def test_kendall_tau_within_groups_ignores_pairs_across_groups() -> None:
    # Within each budget the order is reversed in group a and kept in group b: 3 - 3 = 0;
    # across groups every pair agrees, so the pooled tau is (12 - 3) / 15.
    x = [1, 2, 3, 10, 20, 30]
    y = [3, 2, 1, 10, 20, 30]
    groups = ["a", "a", "a", "b", "b", "b"]
    assert kendall_tau(x, y, groups) == pytest.approx(0.0)
    assert kendall_tau(x, y) == pytest.approx(0.6)
    assert kendall_tau(x[:3], y[:3]) == pytest.approx(-1.0)


def test_kendall_tau_is_nan_without_a_comparable_pair_and_refuses_other_lengths() -> None:
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1, 2], [5, 5]))  # y constant
    assert math.isnan(kendall_tau([1, 2], [1, 2], ["a", "b"]))  # no pair within a group
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2], ["a"])


def test_spearman_and_pearson_on_hand_numbers() -> None:
    assert spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1], [2, 3]))
