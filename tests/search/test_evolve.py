"""The NSGA-II loop on a synthetic objective (no model), and once end-to-end with proxy tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.budget import Budget, repair, violations
from qradaptor.search.evolve import NSGA2Result, Trial, run_nsga2
from qradaptor.search.nsga2 import dominance_matrix
from qradaptor.search.space import MemoryTable, SearchSpace

L = 6
WEIGHTS = np.linspace(1.0, 3.0, L)  # deeper blocks matter more


def synthetic(plan: Plan) -> float:
    """sum_l w_l / bits_l + 0.01 sum_l 1 / rank_l: more bits and rank always help, deep ones most."""
    bits = np.array(plan.block_bits(), dtype=np.float64)
    ranks = np.array(plan.block_ranks(), dtype=np.float64)
    return float((WEIGHTS / bits).sum() + 0.01 * (1.0 / ranks).sum())


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace(num_blocks=L)


@pytest.fixture(scope="module")
def table(llama_factory, space) -> MemoryTable:
    return MemoryTable.build(inspect_model(llama_factory(layers=L)), space)


@pytest.fixture(scope="module")
def budget(table) -> Budget:
    """Between all-minimum and all-maximum bytes, so the budget binds."""
    low = float(table.bytes_of(np.zeros((L, 2), dtype=np.int64)))
    high = float(table.bytes_of(np.tile([3, 2], (L, 1))))
    return Budget("bytes", low + 0.35 * (high - low))


@pytest.fixture(scope="module")
def result(space, table, budget) -> NSGA2Result:
    return run_nsga2(synthetic, space, table, budget, population=8, offspring=4, generations=10, seed=0)


def genome_of(trial: Trial) -> np.ndarray:
    return np.array(trial.genome, dtype=np.int64)


def test_every_trial_is_within_budget_and_priced(result, space, table, budget) -> None:
    assert len(result.trials) > 8
    for number, trial in enumerate(result.trials):
        assert trial.number == number
        g = genome_of(trial)
        assert violations(g, budget, table) == 0
        assert trial.bytes == int(table.bytes_of(g)) <= budget.value
        assert trial.avg_bits == pytest.approx(float(table.avg_bits_of(g)))
        plan = space.to_plan(g)
        assert trial.plan_hash == plan.plan_hash
        assert trial.loss == pytest.approx(synthetic(plan))
        assert trial.generation in range(11) and trial.seconds >= 0


def test_no_genome_is_evaluated_twice(space, table, budget) -> None:
    calls: list[str] = []

    def counting(plan: Plan) -> float:
        calls.append(plan.plan_hash)
        return synthetic(plan)

    seen: list[Trial] = []
    res = run_nsga2(
        counting, space, table, budget, population=8, offspring=4, generations=10, on_evaluation=seen.append
    )
    assert len(calls) == len(set(calls)) == len(res.trials)
    assert len({t.genome for t in res.trials}) == len(res.trials)
    assert tuple(seen) == res.trials
    assert len(res.trials) <= 8 + 4 * 10


def test_deterministic_for_a_seed(result, space, table, budget) -> None:
    def run(seed: int) -> NSGA2Result:
        return run_nsga2(
            synthetic, space, table, budget, population=8, offspring=4, generations=10, seed=seed
        )

    again = run(0)
    strip = [(t.genome, t.loss, t.generation) for t in again.trials]
    assert strip == [(t.genome, t.loss, t.generation) for t in result.trials]
    assert again.population == result.population and again.pareto == result.pareto
    other = run(1)
    assert [t.genome for t in other.trials] != [t.genome for t in result.trials]


def test_search_improves_on_initial_and_random(result, table, budget) -> None:
    initial_best = min(t.loss for t in result.trials if t.generation == 0)
    assert result.best.loss <= initial_best
    assert result.best.loss == min(t.loss for t in result.trials)
    rng = np.random.default_rng(123)
    sizes = np.array([4, 3])
    randoms = [repair(rng, rng.integers(0, sizes, size=(L, 2)), budget, table) for _ in range(20)]
    space = table.space
    mean_random = float(np.mean([synthetic(space.to_plan(g)) for g in randoms]))
    assert result.best.loss < mean_random
    assert any(t.generation > 0 for t in result.trials)  # offspring were actually scored


def test_pareto_is_mutually_non_dominated_and_in_the_population(result) -> None:
    front = [result.trials[i] for i in result.pareto]
    assert front
    objectives = np.array([[t.loss, t.bytes] for t in front])
    assert not dominance_matrix(objectives).any()
    assert {t.genome for t in front} <= set(result.population)
    assert [t.bytes for t in front] == sorted(t.bytes for t in front)
    assert len(result.population) == 8
    # the population's best-first order puts a front member first
    assert result.population[0] in {t.genome for t in front}


def test_defaults_run(space, table, budget) -> None:
    res = run_nsga2(synthetic, space, table, budget)
    assert 1 <= len(res.trials) <= 5 + 1 * 5
    assert len(res.population) == 5
    assert res.best in res.trials


def test_non_finite_losses_become_inf_and_are_dominated(space, table, budget) -> None:
    def half_broken(plan: Plan) -> float:  # about a third of the plans "diverge"
        return math.nan if int(plan.plan_hash, 16) % 3 == 0 else synthetic(plan)

    res = run_nsga2(half_broken, space, table, budget, population=6, offspring=3, generations=4, seed=2)
    losses = [t.loss for t in res.trials]
    assert not any(math.isnan(x) for x in losses)
    assert any(math.isinf(x) for x in losses), "some plan should have diverged"
    assert math.isfinite(res.best.loss)
    finite = [t for t in res.trials if math.isfinite(t.loss)]
    assert res.best.loss == min(t.loss for t in finite)


def test_generations_zero_scores_only_the_initial_population(space, table, budget) -> None:
    res = run_nsga2(synthetic, space, table, budget, population=4, generations=0)
    assert all(t.generation == 0 for t in res.trials) and len(res.population) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"population": 0}, "population"),
        ({"offspring": 0}, "offspring"),
        ({"generations": -1}, "generations"),
        ({"mutation_rate": 1.5}, "mutation_rate"),
        ({"sensitivity": np.ones(3)}, "sensitivity"),
    ],
)
def test_bad_arguments_are_named(space, table, budget, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        run_nsga2(synthetic, space, table, budget, **kwargs)


def test_table_of_another_space_is_rejected(table, budget) -> None:
    with pytest.raises(ValueError, match="table"):
        run_nsga2(synthetic, SearchSpace(num_blocks=L, ranks=(4, 8)), table, budget)


def pattern_ids(rows: int, offset: int, length: int = 32) -> torch.Tensor:
    """(rows, length) windows of a period-8 token cycle at different phases."""
    cycle = torch.tensor([3, 41, 3, 97, 41, 3, 150, 97])
    starts = (torch.arange(rows) * 3 + offset)[:, None]  # (rows, 1)
    return cycle[(starts + torch.arange(length)) % len(cycle)]


def test_with_proxy_tuning_on_a_tiny_llama(llama_factory) -> None:
    from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = llama_factory(layers=3)
        space = SearchSpace(num_blocks=3)
        table = MemoryTable.build(inspect_model(model), space)
        budget = Budget("avg_bits", 4.0)
        config = ProxyConfig(steps=3, batch_size=4, lr=1e-2, warmup=1, eval_batches=1)
        evaluator = ProxyEvaluator(model, pattern_ids(16, 0), pattern_ids(4, 1), config)
        res = run_nsga2(
            lambda plan: evaluator(plan).loss,
            space,
            table,
            budget,
            population=3,
            offspring=1,
            generations=2,
            sensitivity=np.array([0.2, 0.5, 1.0]),
        )
    finally:
        torch.set_num_threads(threads)
    assert evaluator.evaluations == len(res.trials) <= 3 + 2
    assert res.best.avg_bits <= 4.0 and math.isfinite(res.best.loss)
    assert violations(np.array(res.best.genome), budget, table) == 0
    assert res.best.plan_hash in evaluator.cache
    assert res.best.loss == pytest.approx(evaluator.cache[res.best.plan_hash].loss)
