"""The NSGA-II search loop of QR-Adaptor (§3.4): proxy loss and memory, under a budget.

The loop wires the pure kernels of ``nsga2`` to an objective that scores a Plan; it never
sees a model. Each individual is a genome (see ``space``), evaluated once: the objective is
called on a cache miss only, keyed by the genome's bytes.

Notation:
    P        population size (``population``);  O  offspring per generation (``offspring``)
    L        blocks; genome (L, 2) = [bits index, rank index] per block
    F        (n, 2) objectives, both minimised: [proxy loss, Mem(g) bytes]
    v        (n,) budget violation (``budget.violations``); 0 after repair, kept so the
             ranking stays Deb's constrained domination should an infeasible genome appear

One generation (Deb et al. 2002, as adapted in §3.4):
    1. rank and crowd the P parents; draw 2O parents by crowded binary tournament
    2. layer-wise crossover of each pair, proximity mutation, repair to the budget
    3. evaluate the new offspring
    4. keep the best P of parents + offspring (rank, then crowding)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qradaptor.plan import Plan
from qradaptor.search.budget import Budget, repair, violations
from qradaptor.search.initial import initial_population
from qradaptor.search.nsga2 import (
    FloatArray,
    binary_tournament,
    layerwise_crossover,
    proximity_mutation,
    rank_and_crowding,
    select_survivors,
)
from qradaptor.search.space import Genome, MemoryTable, SearchSpace

GenomeTuple = tuple[tuple[int, int], ...]
"""A genome as nested tuples, ((bits index, rank index), ...) per block: hashable and JSON-able."""

# A child that repeats an evaluated genome teaches nothing; with small populations and a
# 1/L mutation rate that is common, so a few fresh draws are tried before accepting a repeat.
_NOVELTY_TRIES = 8


@dataclass(frozen=True)
class Trial:
    """One evaluation of the objective: a genome, its plan and its scores."""

    number: int
    """0-based order of evaluation."""
    generation: int
    """0 for the initial population, g for the offspring of generation g (1-based)."""
    genome: GenomeTuple
    """Choice indices ((bits index, rank index), ...) per block."""
    plan_hash: str
    """``Plan.plan_hash`` of the scored plan."""
    loss: float
    """Objective value (proxy loss, minimised); inf when the objective gave a non-finite value."""
    bytes: int
    """Mem(g): total model bytes of the plan (Eq. 5)."""
    avg_bits: float
    """Average stored bits per block-linear weight (the paper's Avg. Bit)."""
    seconds: float
    """Wall time of the objective call."""


@dataclass(frozen=True)
class NSGA2Result:
    """The outcome of ``run_nsga2``."""

    trials: tuple[Trial, ...]
    """Every evaluation, in order (``trials[i].number == i``)."""
    population: tuple[GenomeTuple, ...]
    """The final population's genomes, best first (rank, then crowding)."""
    pareto: tuple[int, ...]
    """Indices into ``trials`` of the final population's first front, by ascending bytes."""
    best: Trial
    """The trial of lowest loss within the budget (ties: fewer bytes, then earlier)."""


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_tuple(genome: Genome) -> GenomeTuple:
    return tuple((int(b), int(r)) for b, r in genome)


def _selection_objectives(losses: FloatArray, used_bytes: FloatArray) -> FloatArray:
    """(n, 2) objectives for ranking, with inf losses moved to just above the worst finite one.

    Crowding distance divides by an objective's range, which inf would turn into NaN; a
    finite stand-in keeps every diverged genome dominated by any finite one of no more bytes.
    """
    finite = np.isfinite(losses)
    cap = float(losses[finite].max()) + 1.0 if finite.any() else 1.0
    return np.stack([np.where(finite, losses, cap), used_bytes], axis=1)


def score_plans(objective: Callable[[Plan], float], plans: Sequence[Plan]) -> list[float]:
    """Scores a batch of plans: through ``objective.many`` when it has one (the plans may then
    be evaluated in parallel, e.g. by workers), else one call per plan, in order."""
    many = getattr(objective, "many", None)
    values = list(many(list(plans))) if many is not None else [objective(plan) for plan in plans]
    assert len(values) == len(plans), "a batch objective returns one score per plan"
    return [float(v) for v in values]


def run_nsga2(
    objective: Callable[[Plan], float],
    space: SearchSpace,
    table: MemoryTable,
    budget: Budget,
    *,
    population: int = 5,
    offspring: int = 1,
    generations: int = 5,
    mutation_rate: float | None = None,
    sensitivity: npt.ArrayLike | None = None,
    seed: int = 0,
    plan_kwargs: Mapping[str, Any] | None = None,
    on_evaluation: Callable[[Trial], None] | None = None,
    on_generation: Callable[[int], None] | None = None,
) -> NSGA2Result:
    """Searches per-block (bits, rank) for low proxy loss and low memory under ``budget`` (§3.4).

    Starts from the sensitivity-biased initial population (§3.3), then runs ``generations``
    rounds of tournament, layer-wise crossover, proximity mutation, repair and elitist
    survival (module docstring). Objectives are (loss, bytes), both minimised; every genome
    is repaired to the budget, so every trial is feasible. The search draws all its randomness
    from ``numpy.random.default_rng(seed)``: for a deterministic objective the result is a
    function of the arguments. At most P + O * generations plans are scored, in batches:
    the initial population, then each generation's O children (see ``score_plans``).

    Args:
        objective: scores a Plan, lower is better (e.g. ``lambda p: evaluator(p).loss``);
            NaN or inf values are recorded as inf (dominated by any finite loss). With a
            ``many(plans)`` method, each batch goes to it in one call.
        space: the (bits, rank) choices per block.
        table: the memory table built for ``space``.
        budget: the memory constraint (avg bits or bytes).
        population: P, individuals kept each generation (>= 1).
        offspring: O, children per generation (>= 1).
        generations: rounds of reproduction (>= 0; 0 scores only the initial population).
        mutation_rate: per-gene probability of a proximity step, in [0, 1]; None means 1 / L.
        sensitivity: (L,) per-unit sensitivity (Eq. 6; ``unit_sensitivity`` of a block profile)
            biasing the initial population and the repair order; None for the "no profiling" ablation.
        seed: seeds the search's random generator.
        plan_kwargs: passed to every Plan (group_size, alpha, ...), as in ``SearchSpace.to_plan``.
        on_evaluation: called with each new Trial as soon as it is scored (progress, logging).
        on_generation: called with 0 before the initial population is scored and with g
            before generation g's offspring are (so an objective can tag where plans came from).

    Returns:
        The trials, the final population, its first front and the best trial.

    Raises:
        ValueError: on bad counts, a rate outside [0, 1], a table built for another space, a
            sensitivity of the wrong shape, or a budget no genome of the space meets.
    """
    population = _check_count(population, "population", 1)
    offspring = _check_count(offspring, "offspring", 1)
    generations = _check_count(generations, "generations", 0)
    if table.space != space:
        raise ValueError(f"table must be built for the searched space {space}, got one for {table.space}")
    n_units = space.num_units  # genome rows: blocks, or modules
    rate = 1.0 / n_units if mutation_rate is None else mutation_rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation_rate must be a probability in [0, 1] or None, got {mutation_rate!r}")
    sens = None
    if sensitivity is not None:
        sens = np.asarray(sensitivity, dtype=np.float64)
        if sens.shape != (n_units,) or not np.all(np.isfinite(sens)):
            raise ValueError(
                f"sensitivity must be {n_units} finite values, one per {space.granularity} "
                f"(see space.unit_sensitivity), got shape {sens.shape}"
            )
    kwargs = dict(plan_kwargs or {})
    rng = np.random.default_rng(seed)
    n_bits, n_ranks = len(space.bit_choices), len(space.rank_choices)

    trials: list[Trial] = []
    index_of: dict[bytes, int] = {}  # genome bytes -> trial number: the evaluation cache

    def evaluate(genomes: list[Genome], generation: int) -> list[int]:
        """Trial numbers of ``genomes``; the new ones are scored as one batch, numbered in order."""
        fresh: dict[bytes, Genome] = {}
        for genome in genomes:
            if genome.tobytes() not in index_of:
                fresh.setdefault(genome.tobytes(), genome)
        plans = [space.to_plan(genome, **kwargs) for genome in fresh.values()]
        start = time.perf_counter()
        values = score_plans(objective, plans)
        seconds = (time.perf_counter() - start) / max(len(plans), 1)  # the batch's wall time, shared
        for (key, genome), plan, value in zip(fresh.items(), plans, values, strict=True):
            trial = Trial(
                number=len(trials),
                generation=generation,
                genome=_as_tuple(genome),
                plan_hash=plan.plan_hash,
                loss=value if math.isfinite(value) else math.inf,
                bytes=int(table.bytes_of(genome)),
                avg_bits=float(table.avg_bits_of(genome)),
                seconds=seconds,
            )
            trials.append(trial)
            index_of[key] = trial.number
            if on_evaluation is not None:
                on_evaluation(trial)
        return [index_of[genome.tobytes()] for genome in genomes]

    def scores(members: list[int]) -> tuple[FloatArray, FloatArray]:
        losses = np.array([trials[i].loss for i in members], dtype=np.float64)
        used = np.array([trials[i].bytes for i in members], dtype=np.float64)
        genomes = np.array([trials[i].genome for i in members], dtype=np.int64)  # (n, L, 2)
        return _selection_objectives(losses, used), violations(genomes, budget, table)

    if on_generation is not None:
        on_generation(0)
    start_genomes = initial_population(rng, population, table, budget, sens)
    members = evaluate(list(start_genomes), 0)  # trial numbers, may repeat

    for generation in range(1, generations + 1):
        if on_generation is not None:
            on_generation(generation)
        objectives, violation = scores(members)
        ranks, crowding = rank_and_crowding(objectives, violation)
        # Every child of a generation is drawn before any is scored, so the O evaluations can
        # run in parallel; the draws depend only on the parents' scores, so the result is the
        # same as drawing and scoring them one by one.
        drawn: list[Genome] = []
        for _ in range(offspring):
            for _ in range(_NOVELTY_TRIES):
                a, b = binary_tournament(rng, ranks, crowding, 2)
                parent_a = np.array(trials[members[a]].genome, dtype=np.int64)
                parent_b = np.array(trials[members[b]].genome, dtype=np.int64)
                child = layerwise_crossover(rng, parent_a, parent_b)
                child = proximity_mutation(rng, child, n_bits, n_ranks, rate)
                child = repair(rng, child, budget, table, sens)
                if child.tobytes() not in index_of and all(child.tobytes() != d.tobytes() for d in drawn):
                    break
            drawn.append(child)
        children = evaluate(drawn, generation)
        merged = members + children
        # Repeats would crowd out distinct genomes; select among distinct ones when enough exist.
        distinct = list(dict.fromkeys(merged))
        pool = distinct if len(distinct) >= population else merged
        objectives, violation = scores(pool)
        members = [pool[i] for i in select_survivors(objectives, violation, population)]

    objectives, violation = scores(members)
    members = [members[i] for i in select_survivors(objectives, violation, len(members))]  # best first
    objectives, violation = scores(members)
    ranks, _ = rank_and_crowding(objectives, violation)
    front = sorted({members[i] for i in np.flatnonzero(ranks == 0)}, key=lambda t: (trials[t].bytes, t))
    feasible = [t for t in trials if violations(np.array(t.genome), budget, table) == 0]
    assert feasible, "every genome is repaired to the budget"
    best = min(feasible, key=lambda t: (t.loss, t.bytes, t.number))
    return NSGA2Result(
        trials=tuple(trials),
        population=tuple(trials[i].genome for i in members),
        pareto=tuple(front),
        best=best,
    )
