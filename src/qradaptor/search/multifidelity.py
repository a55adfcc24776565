"""The multi-fidelity search: many plans scored cheaply, few scored well (successive halving).

The paper's search fine-tunes every plan it proposes (§3.4). Measured on SmolLM2, a plan's
held-out loss before any fine-tune ranks plans nearly as the 10-step proxy does (Spearman
0.92 or more in most landed searches), at the cost of one forward pass. So plans climb rungs
of rising fidelity, as in Hyperband (Li et al., 2018) and AutoQRA (arXiv 2602.22268):

    rung 0      forward only: the held-out loss of the quantised plan, for every candidate
    rung 1..R   proxy fine-tunes of steps s/eta^(R-1), ..., s/eta, s (the last is the search's
                own proxy, so its scores are the paper strategy's); each rung keeps the best
                1/eta of the one below

Candidates are the knapsack plans of a budget sweep and their neighbourhood through the
paper's operators (``candidates``). The knapsack plan at the budget is promoted at every
rung whatever its score, so the chosen plan, the best on the top rung, is never worse than
it there. The paper's Gaussian-process refinement (``bayes``) then runs on the top rung.

At module granularity the same holds with a unit per linear: the knapsack over a per-module
KL table (``qra profile --granularity module``), candidates made on the items of ``ties`` so
that tied groups (vLLM's fused q/k/v and gate/up) share one choice in every plan, and the
refinement's GP over the KL per module type instead of 2 x 210 genes (``refinement``).

Every rung is a ``StudyObjective`` of its own study (named by its steps), so each score is
computed once, ever, and a killed search resumes by replay like the paper strategy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from qradaptor.search.candidates import knapsack_candidates, neighbours
from qradaptor.search.ties import TiedUnits

if TYPE_CHECKING:
    from qradaptor.plan import Plan
    from qradaptor.search.budget import Budget
    from qradaptor.search.records import TrialRecord
    from qradaptor.search.space import Genome, MemoryTable


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class HalvingConfig:
    """How many plans each rung scores."""

    candidates: int = 24
    """Plans scored on rung 0 (forward only): the knapsack sweep, then its neighbours."""
    sweep: int = 8
    """Of those, knapsack plans of a budget sweep (the rest are their neighbours)."""
    eta: int = 3
    """Each rung keeps the best 1/eta of the rung below (rounded up)."""
    rungs: int = 2
    """Proxy fine-tune rungs above the forward-only one; the top one runs the full proxy. 0: the
    forward-only screen is the top rung, so its proxy has 0 steps (a search of forward passes
    only: the recorded screens chose the full search's plans, docs/ALLOCATION.md)."""
    screen_margin: float = 2.0
    """With the screen the top rung: standard errors (paired over the held-out windows) by which
    its best plan must lie below the knapsack plan to be chosen over it (``screen_choice``); 0:
    the lowest mean wins."""

    def __post_init__(self) -> None:
        _check_int(self.candidates, "candidates", 1)
        _check_int(self.sweep, "sweep", 1)
        _check_int(self.eta, "eta", 2)
        _check_int(self.rungs, "rungs", 0)
        margin = self.screen_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
            raise ValueError(f"screen_margin must be a number of standard errors >= 0, got {margin!r}")

    def sizes(self) -> tuple[int, ...]:
        """Plans per rung, rung 0 first: ceil(candidates / eta^i) (the knapsack plan may add one)."""
        return tuple(math.ceil(self.candidates / self.eta**i) for i in range(self.rungs + 1))

    def steps(self, top_steps: int) -> tuple[int, ...]:
        """Proxy steps per rung: 0 (forward only), then top_steps / eta^(R - i) rounded up, ..., top_steps."""
        return (
            0,
            *(max(1, math.ceil(top_steps / self.eta ** (self.rungs - i))) for i in range(1, self.rungs + 1)),
        )


def promote(losses: Sequence[float], keep: int, always: Sequence[int] = ()) -> list[int]:
    """Positions of the ``keep`` lowest losses (ties: earlier first), plus ``always``, in rank order.

    Non-finite losses (diverged plans) rank last.
    """
    order = sorted(range(len(losses)), key=lambda i: (not math.isfinite(losses[i]), losses[i], i))
    kept = order[:keep]
    return kept + [i for i in always if i not in kept]


class RungObjective(Protocol):
    """What a rung needs of a ``StudyObjective``."""

    phase: str
    generation: int

    def record_many(self, plans: list[Plan], names: list[str] | None = None) -> list[TrialRecord]: ...


def run_halving(
    rungs: Sequence[RungObjective],
    table: MemoryTable,
    budget: Budget,
    values: npt.ArrayLike,
    config: HalvingConfig,
    *,
    seed: int = 0,
    plan_kwargs: Mapping[str, Any] | None = None,
    tied: Sequence[tuple[str, ...]] = (),
) -> list[list[TrialRecord]]:
    """Scores the candidates rung by rung, promoting the best 1/eta and always the knapsack plan.

    Args:
        rungs: one objective per rung (``config.rungs + 1``), lowest fidelity first.
        table: prices genomes.
        budget: every candidate meets it.
        values: (L, len(bit_choices)) per-unit KL of each bit choice (``knapsack.unit_values``).
        config: candidates and rung sizes.
        seed: seeds the neighbourhood draws.
        plan_kwargs: passed to every Plan.
        tied: at module granularity, groups of a block's linear names that share one choice
            in every candidate (``ties``: the candidates are made on items, then expanded).

    Returns:
        Each rung's records, in the order scored (the knapsack plan first).
    """
    if len(rungs) != config.rungs + 1:
        raise ValueError(f"run_halving needs {config.rungs + 1} rung objectives, got {len(rungs)}")
    space = table.space
    units = TiedUnits.build(table, tied)
    v = units.values(values)  # (I, K): one row per item (per unit when nothing is tied)
    rng = np.random.default_rng(seed)
    sweep = knapsack_candidates(units.items, v, budget, min(config.sweep, config.candidates))
    near = neighbours(rng, sweep, units.items, budget, v[:, 0] - v[:, -1], config.candidates - len(sweep))
    genomes: list[Genome] = [units.expand(g) for g in sweep + near]
    kwargs = dict(plan_kwargs or {})
    alive = list(range(len(genomes)))  # positions in genomes; 0 is the knapsack plan at the budget
    sizes = config.sizes()
    out: list[list[TrialRecord]] = []
    for rung, objective in enumerate(rungs):
        objective.generation = rung
        objective.phase = "knapsack"
        records = objective.record_many([space.to_plan(genomes[0], **kwargs)], ["knapsack"])
        objective.phase = "screen" if rung == 0 else "halving"
        records += objective.record_many([space.to_plan(genomes[i], **kwargs) for i in alive[1:]])
        out.append(records)
        if rung + 1 < len(rungs):
            kept = promote([r.loss for r in records], sizes[rung + 1], always=[0])
            alive = [alive[k] for k in sorted(kept)]  # keep the knapsack plan first
    return out
