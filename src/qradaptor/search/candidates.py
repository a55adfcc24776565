"""The first candidates of the multi-fidelity search: knapsack plans and their neighbours.

A search that starts from random plans spends its evaluations finding what the sensitivity
table already says. This one starts where the exact allocator stands (``knapsack``) and
looks around it, because the table's one assumption, that the KLs of separately quantised
blocks add, is where a measured score can do better:

    1. the knapsack plan at b as ``qra plan --baseline knapsack`` makes it (under a byte
       budget its ranks chosen too, bits first: ``knapsack_ranks.bytes_left_to_ranks``), then
       knapsack plans over a sweep of budgets b, b(1 - d), b(1 - 2d), ... (each then
       filled back up to b, most sensitive units first), at each rank choice that a
       byte budget can afford (one rank, the largest, under an avg-bits budget, where
       rank costs nothing): different allocations, each close to the table's optimum;
    2. their neighbourhood through the paper's operators (§3.4): layer-wise crossover of
       two of them and proximity mutation, repaired to the budget and filled up to it.

All pure: arrays in, arrays out, every genome within the budget, no repeats, the knapsack
plan at the budget first.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qradaptor.search.budget import Budget, check_budget, fill, repair, violation
from qradaptor.search.initial import normalise
from qradaptor.search.knapsack import chooses_ranks_by_default, knapsack_genome, lowest_at_rank
from qradaptor.search.knapsack_ranks import bytes_left_to_ranks, knapsack_genome_ranks
from qradaptor.search.nsga2 import layerwise_crossover, proximity_mutation
from qradaptor.search.space import Genome, MemoryTable

SWEEP_STEP = 0.02
"""d: each sweep budget is 2% below the last."""


def _affordable_ranks(table: MemoryTable, budget: Budget) -> list[int]:
    """The ranks whose smallest plan fits: the largest alone under avg bits (rank is free there)."""
    ranks = table.space.rank_choices
    if budget.kind == "avg_bits":
        return [ranks[-1]]
    fits = [r for j, r in enumerate(ranks) if violation(lowest_at_rank(table.space, j), budget, table) == 0]
    return fits[::-1]  # largest first: adapters are what the fine-tune trains


def knapsack_candidates(
    table: MemoryTable, values: npt.ArrayLike, budget: Budget, count: int
) -> list[Genome]:
    """Up to ``count`` distinct genomes: knapsack solutions over a budget sweep, filled to ``budget``.

    The first is the knapsack plan at ``budget`` itself: at the largest rank under an avg-bits
    budget, with each unit's rank chosen, bits first, under a byte budget (as ``knapsack_plan``
    makes it by default, so the search's guarantee is against the baseline users get).

    Raises:
        ValueError: if no plan of the space fits ``budget`` (naming the smallest).
    """
    v = np.asarray(values, dtype=np.float64)
    sensitivity = normalise(v[:, 0] - v[:, -1])  # what a unit loses at its lowest bits: the fill order
    check_budget(budget, table)  # some rank fits unless the space's smallest plan does not
    ranks = _affordable_ranks(table, budget)
    out: list[Genome] = []
    seen: set[bytes] = set()
    if count >= 1 and chooses_ranks_by_default(budget, rank=None):  # as knapsack_plan makes it
        first = knapsack_genome_ranks(table, v, budget, bytes_left_to_ranks(table.space.rank_choices))
        seen.add(first.tobytes())
        out.append(first)
    for step in range(max(count, 1) * 4):
        if len(out) >= count:
            break
        scaled = Budget(budget.kind, budget.value * (1 - SWEEP_STEP * (step // len(ranks))))
        rank = ranks[step % len(ranks)]
        try:
            genome = knapsack_genome(table, v, scaled, rank=rank)
        except ValueError:
            continue  # the sweep went below this rank's smallest plan; other ranks may still fit
        genome = fill(np.random.default_rng(0), genome, budget, table, sensitivity, noise=0.0)
        key = genome.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(genome)
    return out


def neighbours(
    rng: np.random.Generator,
    parents: list[Genome],
    table: MemoryTable,
    budget: Budget,
    sensitivity: npt.ArrayLike,
    count: int,
    *,
    mutation_rate: float | None = None,
    exclude: list[Genome] | None = None,
) -> list[Genome]:
    """Up to ``count`` new genomes near ``parents``: crossover of two, proximity mutation, repair, fill.

    Args:
        rng: the search's random generator.
        parents: (L, 2) genomes to recombine (one is enough: it is then only mutated).
        table: prices genomes.
        budget: every child is repaired to it, then filled up to it.
        sensitivity: (L,) per-unit sensitivity (any scale; normalised here): the repair and
            fill order.
        count: children wanted; fewer come back when the neighbourhood runs dry.
        mutation_rate: per-gene proximity-step probability; None is 2 / L (one step
            on average is often undone by the repair and fill).
        exclude: genomes not to return (e.g. the parents themselves).
    """
    if not parents:
        raise ValueError("neighbours needs at least one parent genome")
    space = table.space
    rate = min(1.0, 2.0 / space.num_units) if mutation_rate is None else mutation_rate
    sens = normalise(sensitivity)
    sizes = (len(space.bit_choices), len(space.rank_choices))
    seen = {g.tobytes() for g in (exclude or [])} | {np.asarray(p).tobytes() for p in parents}
    out: list[Genome] = []
    for _ in range(count * 20):
        if len(out) >= count:
            break
        a, b = (parents[i] for i in rng.integers(0, len(parents), size=2))
        child = proximity_mutation(rng, layerwise_crossover(rng, a, b), *sizes, rate)
        child = repair(rng, child, budget, table, sens)
        child = fill(rng, child, budget, table, sens)
        key = child.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(child)
    return out
