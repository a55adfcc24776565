"""The knapsack that chooses each unit's rank as well as its bits, from a measured rank benefit.

Under a byte budget an adapter's bytes compete with the weights'. The KL table prices bits
but cannot price rank: a LoRA adapter starts at zero, so its rank changes nothing before
fine-tuning. What a rank is worth is therefore measured, not assumed:

    benefit(r) = proxy loss of a plan, every unit at the smallest rank
               - proxy loss of the same plan, every unit at rank r

(held-out nats per token after the search's proxy fine-tune; ``benchmarks/rank_benefit.py``
measures it), and the knapsack solves, exactly as ``knapsack.py`` does for bits alone,

    minimise    sum_u S_u(b_u) - benefit(r_u) / U
    subject to  sum_u cost_u(b_u, r_u) <= capacity

S_u(b) is the KL (nats per token of the model's output) of quantising unit u alone, so the sum
and a loss difference are in one unit: to first order quantising raises the held-out loss by
the KL to the unquantised model. Spreading a rank's benefit evenly over the U units assumes it
adds over units, as the KLs are assumed to. With every benefit 0 the knapsack puts every unit
at the smallest rank and spends the bytes that frees on bits (ties go to the cheaper choice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from qradaptor.search.budget import Budget, check_budget, violation
from qradaptor.search.knapsack import solve_items, unit_costs
from qradaptor.search.space import DEFAULT_RANKS, Genome, MemoryTable

TIE_BREAK = 1e-10
"""Nats per unit of rank in ``bytes_left_to_ranks``: 16 against 4 is worth 1.2e-9 nats, far below
any KL a bit-width changes (the smallest gap between two bit choices of one unit in the landed
profiles is 8.5e-7 nats, 6 against 8 bits), so it only breaks ties in summed KL."""


def bytes_left_to_ranks(ranks: Sequence[int] = DEFAULT_RANKS) -> dict[int, float]:
    """The rank benefit of the knapsack's default under a byte budget: bits first, then rank.

    A rank is worth ``TIE_BREAK`` nats per unit of rank above the smallest, so the knapsack
    finds the least summed KL first and, among the plans that reach it, the one with the most
    adapter rank in all: the bytes that buy no bits go to adapters. Measured on SmolLM2 at
    120 MB, this is what the fine-tune prefers: rank 4 everywhere with the bytes on bits, PPL
    33.27, against 538.54 for rank 16 everywhere (docs/ALLOCATION.md, ninth run); a measured
    rank's worth was +0.002 to +0.004 nats, a bit-width's tenths of a nat.

    Raises:
        ValueError: for no ranks, a repeated rank or a rank below 0.
    """
    ordered = sorted(ranks)
    if not ordered or len(set(ordered)) != len(ordered) or ordered[0] < 0:
        raise ValueError(f"ranks must be distinct integers >= 0, at least one, got {list(ranks)}")
    return {rank: (rank - ordered[0]) * TIE_BREAK for rank in ordered}


def check_rank_benefit(benefit: Mapping[int, float], where: str = "rank benefit") -> dict[int, float]:
    """``benefit`` as a dict sorted by rank, checked: integer ranks >= 0, finite nats.

    Raises:
        ValueError: naming what is wrong and what is accepted.
    """
    if not isinstance(benefit, Mapping) or not benefit:
        raise ValueError(f"{where} needs at least one RANK:NATS pair, e.g. 4:0,8:0.002,16:0.003")
    out: dict[int, float] = {}
    for rank, nats in benefit.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"{where}: ranks must be integers >= 0, got {rank!r}")
        if isinstance(nats, bool) or not isinstance(nats, int | float) or not math.isfinite(nats):
            raise ValueError(f"{where}: rank {rank}'s benefit must be a finite number of nats, got {nats!r}")
        out[rank] = float(nats)
    return dict(sorted(out.items()))


def parse_rank_benefit(text: str, where: str = "--rank-benefit") -> dict[int, float]:
    """``"4:0,8:0.002,16:0.003"`` as {4: 0.0, 8: 0.002, 16: 0.003}, checked.

    Raises:
        ValueError: for a pair that is not RANK:NATS, a repeated rank, or a bad value.
    """
    out: dict[int, float] = {}
    for pair in text.split(","):
        rank, sep, nats = pair.strip().partition(":")
        try:
            key, value = int(rank), float(nats)
        except ValueError:
            key, value = -1, math.nan
        if not sep or key < 0 or not math.isfinite(value):
            raise ValueError(
                f"{where} takes RANK:NATS pairs, comma-separated (e.g. 4:0,8:0.002,16:0.003), got {pair!r}"
            )
        if key in out:
            raise ValueError(f"{where} gives rank {key} twice")
        out[key] = value
    return check_rank_benefit(out, where)


def benefit_from_losses(losses: Mapping[int, float]) -> dict[int, float]:
    """Each rank's benefit: the smallest rank's proxy loss less its own (one plan, ranks varied).

    Raises:
        ValueError: for a non-finite loss (a diverged proxy prices nothing).
    """
    checked = check_rank_benefit(losses, "proxy losses by rank")
    base = checked[min(checked)]
    return {rank: base - loss for rank, loss in checked.items()}


def knapsack_genome_ranks(
    table: MemoryTable,
    values: npt.ArrayLike,
    budget: Budget,
    benefit: Mapping[int, float],
    *,
    items: npt.ArrayLike | None = None,
) -> Genome:
    """The genome of least summed S_u(b) - benefit(r) / U within ``budget``, bits and ranks chosen.

    Args:
        table: prices genomes; its space's rank choices are the ranks ``benefit`` prices.
        values: (U, len(bit_choices)) per-unit KL of each bit choice (``unit_values``).
        budget: avg bits (rank costs nothing: the rank of most benefit wins) or bytes.
        benefit: held-out nats per token each rank choice gains over the smallest
            (``benefit_from_losses``), for the whole model.
        items: (U,) optional item of each unit (``tie_items``): units of one item share one
            choice of bits and rank.

    Raises:
        ValueError: if ``benefit`` does not price exactly the space's rank choices, ``values``
            has the wrong shape, or the space's smallest plan exceeds the budget (naming it).
    """
    space = table.space
    priced = check_rank_benefit(benefit)
    if tuple(priced) != tuple(sorted(space.rank_choices)):
        raise ValueError(
            f"the rank benefit prices ranks {list(priced)}, the space's rank choices are "
            f"{list(space.rank_choices)}: give one benefit per rank choice"
        )
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (space.num_units, len(space.bit_choices)):
        wanted = (space.num_units, len(space.bit_choices))
        raise ValueError(f"values must have shape {wanted}, got {v.shape}")
    check_budget(budget, table)  # raises, naming the space's smallest plan (every choice its first)
    gain = np.array([priced[r] for r in space.rank_choices]) / space.num_units  # (R,)
    costs, capacity = unit_costs(table, budget)  # (U, K, R)
    joint = v[:, :, None] - gain[None, None, :]  # (U, K, R): choice k * R + j
    units, bit_count, rank_count = costs.shape
    picked = solve_items(costs.reshape(units, -1), joint.reshape(units, -1), capacity, items)
    assert picked is not None, "the smallest plan fits, so the knapsack has a solution"
    genome = np.stack([picked // rank_count, picked % rank_count], axis=1).astype(np.int64)
    assert violation(genome, budget, table) == 0, "the knapsack's costs are the table's"
    return genome
