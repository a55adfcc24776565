"""Correlation coefficients of two sequences: pure Python, no torch (reports import them cheaply)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either is constant."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    return pearson(ranks(x), ranks(y))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan if either sequence is constant or they differ in length < 2."""
    if len(x) != len(y) or len(x) < 2:
        return math.nan
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def kendall_tau(x: Sequence[float], y: Sequence[float], groups: Sequence[object] | None = None) -> float:
    """Kendall's tau-b of two sequences, optionally over the pairs within each group only.

    Over the pairs (i, j) considered, with C concordant and D discordant pairs, and T_x
    (T_y) the pairs tied in x only (y only):

        tau_b = (C - D) / sqrt((C + D + T_x) * (C + D + T_y))

    pairs tied in both count in neither. Without ``groups`` every pair is considered (scipy's
    ``kendalltau``, variant "b"); with ``groups`` only pairs of equal group, so plans of one
    memory budget are compared with each other and never across budgets (where memory alone
    would order them).

    Args:
        x: the first values, e.g. a fidelity's scores.
        y: the second values, e.g. the final perplexities; same length as ``x``.
        groups: one label per position, or None for one group.

    Returns:
        tau-b in [-1, 1]; nan if fewer than two positions, no pair is considered, or either
        sequence is constant over the considered pairs.

    Raises:
        ValueError: if the lengths differ.
    """
    if len(x) != len(y) or (groups is not None and len(groups) != len(x)):
        sizes = [len(x), len(y)] + ([] if groups is None else [len(groups)])
        raise ValueError(f"x, y and groups must have one length, got lengths {sizes}")
    concordant = discordant = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if groups is not None and groups[i] != groups[j]:
                continue
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + tied_x) * (concordant + discordant + tied_y))
    return math.nan if denominator == 0 else (concordant - discordant) / denominator
