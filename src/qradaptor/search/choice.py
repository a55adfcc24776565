"""The search's result from its records: the Pareto front and the chosen plan.

Pure functions of trial records and the memory table; the same for every strategy.
"""

from __future__ import annotations

import math

import numpy as np

from qradaptor.search.bayes import front_members
from qradaptor.search.budget import Budget, violations
from qradaptor.search.records import SEARCH_PHASES, TrialRecord, genome_of
from qradaptor.search.space import MemoryTable


def pareto_numbers(records: list[TrialRecord], table: MemoryTable, budget: Budget) -> tuple[int, ...]:
    """Trial numbers of the front of the feasible, finite search records, by ascending bytes."""
    space = table.space
    search = [r for r in records if r.phase in SEARCH_PHASES and math.isfinite(r.loss)]
    if not search:
        return ()
    genomes = np.stack([genome_of(r, space) for r in search])
    losses = np.array([r.loss for r in search])
    feasible = violations(genomes, budget, table) == 0
    if not feasible.any():
        return ()
    front = {g.tobytes() for g in front_members(genomes, losses, table, budget)}
    chosen = [r for r, g in zip(search, genomes, strict=True) if g.tobytes() in front]
    return tuple(r.number for r in sorted(chosen, key=lambda r: (r.bytes, r.number)))


def choose(records: list[TrialRecord], table: MemoryTable, budget: Budget) -> TrialRecord:
    """The lowest loss within the budget; references count too (a uniform plan may be best)."""
    space = table.space
    feasible = [r for r in records if violations(genome_of(r, space), budget, table) == 0]
    assert feasible, "the search evaluates at least one feasible plan"
    return min(feasible, key=lambda r: (r.loss, r.bytes, r.number))
