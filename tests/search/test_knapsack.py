"""The exact allocator: brute force on small tables, the budget, its errors, and its plans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qradaptor.memory import plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.budget import Budget, parse_budget, violation
from qradaptor.search.knapsack import knapsack_genome, knapsack_plan, solve_mckp, unit_values
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.sensitivity_table import SensitivityTable


def brute_force(costs, values, capacity):
    """(least total value, its choice) over every selection within capacity, or None."""
    best = None
    for combo in itertools.product(range(costs.shape[1]), repeat=costs.shape[0]):
        rows = np.arange(costs.shape[0])
        if costs[rows, combo].sum() <= capacity:
            total = values[rows, combo].sum()
            if best is None or total < best[0] - 1e-12:
                best = (total, combo)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_solver_equals_brute_force_on_small_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    units, choices = rng.integers(1, 6), rng.integers(1, 4)
    costs = rng.integers(0, 12, (units, choices))
    values = rng.random((units, choices))
    capacity = int(rng.integers(0, 12 * units))
    expected = brute_force(costs, values, capacity)
    got = solve_mckp(costs, values, capacity)
    if expected is None:
        assert got is None
        return
    rows = np.arange(units)
    assert costs[rows, got].sum() <= capacity
    assert values[rows, got].sum() == pytest.approx(expected[0], abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_solver_equals_brute_force_with_forbidden_choices(seed: int) -> None:
    """The exact prunes (no completion fits; every completion fits) with inf values among the choices."""
    rng = np.random.default_rng(100 + seed)
    units, choices = rng.integers(2, 6), rng.integers(2, 4)
    costs = rng.integers(0, 12, (units, choices))
    values = np.where(rng.random((units, choices)) < 0.25, np.inf, rng.random((units, choices)))
    capacity = int(rng.integers(0, 12 * units))
    expected = brute_force(costs, values, capacity)
    got = solve_mckp(costs, values, capacity)
    if expected is None or not np.isfinite(expected[0]):
        assert got is None
        return
    rows = np.arange(units)
    assert costs[rows, got].sum() <= capacity
    assert values[rows, got].sum() == pytest.approx(expected[0], abs=1e-12)


def test_solver_hand_case_prefers_the_cheaper_of_equal_values() -> None:
    # Unit 0 gains 1.0 for 2 more cost units, unit 1 gains 0.5: with room for one upgrade, unit 0.
    costs = np.array([[1, 3], [1, 3]])
    values = np.array([[1.0, 0.0], [0.5, 0.0]])
    assert solve_mckp(costs, values, 4).tolist() == [1, 0]
    assert solve_mckp(costs, values, 6).tolist() == [1, 1]
    assert solve_mckp(costs, values, 1) is None
    # Equal values: the cheaper choice.
    assert solve_mckp(np.array([[1, 2]]), np.array([[0.0, 0.0]]), 5).tolist() == [0]


def test_solver_refuses_bad_arrays() -> None:
    with pytest.raises(ValueError, match=r"\(L, K\) arrays of one shape"):
        solve_mckp(np.zeros((2, 3), dtype=int), np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="non-negative integers"):
        solve_mckp(np.array([[0.5, 1.0]]), np.array([[0.0, 1.0]]), 1)


def _table(model, bits=(2, 3, 4, 8), ranks=(8,), group_size=32) -> MemoryTable:
    structure = inspect_model(model)
    space = SearchSpace.for_structure(structure, "block", bits=bits, ranks=ranks)
    return MemoryTable.build(structure, space, group_size=group_size)


def _sensitivity(num_blocks: int, seed: int = 0, bits=(2, 3, 4, 8), group_size=32) -> SensitivityTable:
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0, 1.5, num_blocks)  # blocks differ by orders of magnitude
    kl = tuple(tuple(float(s * 4.0 ** -(b - 2)) for b in bits) for s in scale)
    return SensitivityTable(bits=tuple(bits), kl=kl, tokens=64, group_size=group_size, quant_method="hqq")


@pytest.mark.parametrize("budget", ["3.2bits", "3.5bits", "4.0bits", "4.7bits", "6bits"])
def test_knapsack_genome_is_the_exact_optimum_within_an_avg_bits_budget(llama_factory, budget) -> None:
    model = llama_factory(layers=5)
    table = _table(model)
    sens = _sensitivity(5)
    values = unit_values(table.space, sens)
    parsed = parse_budget(budget)
    genome = knapsack_genome(table, values, parsed, rank=8)
    assert violation(genome, parsed, table) == 0
    best = min(
        values[np.arange(5), list(combo)].sum()
        for combo in itertools.product(range(4), repeat=5)
        if violation(np.stack([combo, [0] * 5], axis=1), parsed, table) == 0
    )
    assert values[np.arange(5), genome[:, 0]].sum() == pytest.approx(best)


def test_byte_budget_counts_the_adapters_exactly(llama_factory) -> None:
    model = llama_factory(layers=4)
    table = _table(model, ranks=(0, 16))
    values = unit_values(table.space, _sensitivity(4))
    low = np.zeros((4, 2), dtype=np.int64)
    floor16 = int(table.bytes_of(np.stack([low[:, 0], np.ones(4, dtype=np.int64)], axis=1)))
    budget = Budget("bytes", float(floor16 + 3000))
    with_adapters = knapsack_genome(table, values, budget, rank=16)
    without = knapsack_genome(table, values, budget, rank=0)
    assert int(table.bytes_of(with_adapters)) <= budget.value and int(table.bytes_of(without)) <= budget.value
    assert (with_adapters[:, 1] == 1).all() and (without[:, 1] == 0).all()
    # The adapters' bytes leave less for bits.
    assert without[:, 0].sum() > with_adapters[:, 0].sum()


def test_a_budget_below_the_smallest_plan_names_the_smallest(llama_factory) -> None:
    table = _table(llama_factory())
    values = unit_values(table.space, _sensitivity(3))
    with pytest.raises(ValueError, match=r"below the smallest plan of the search space: 3 avg bits"):
        knapsack_genome(table, values, parse_budget("2.5bits"), rank=8)
    table = _table(llama_factory(), ranks=(4, 32))  # 32: the width of the tiny k/v projections
    low_bytes = int(table.bytes_of(np.zeros((3, 2), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"below the smallest plan at rank 32: \d+ bytes; raise the budget"):
        knapsack_genome(
            table, unit_values(table.space, _sensitivity(3)), Budget("bytes", low_bytes + 1), rank=32
        )
    with pytest.raises(ValueError, match=r"rank must be one of the rank choices \(4, 32\), got 16"):
        knapsack_genome(table, values, parse_budget("4bits"), rank=16)


def test_a_table_of_another_model_or_other_bits_is_refused(llama_factory) -> None:
    space = SearchSpace(3, bits=(2, 3, 4, 8))
    with pytest.raises(ValueError, match="sensitivity table has 4 blocks, the model 3"):
        unit_values(space, _sensitivity(4))
    with pytest.raises(ValueError, match=r"lacks bits \[8\] of the choices \(2, 3, 4, 8\)"):
        unit_values(space, _sensitivity(3, bits=(2, 3, 4)))
    with pytest.raises(ValueError, match="at module granularity takes a per-module sensitivity table"):
        unit_values(SearchSpace(3, modules=("a", "b")), _sensitivity(3))
    structure = inspect_model(llama_factory())
    with pytest.raises(
        ValueError, match="profiled at group size 32 with hqq, the plan quantises at group size 64"
    ):
        knapsack_plan(structure, _sensitivity(3), parse_budget("4bits"), group_size=64)


def test_sixteen_bits_costs_its_bytes_and_no_kl(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    sens = _sensitivity(3)
    plan = knapsack_plan(structure, sens, parse_budget("16bits"), bits=(2, 4, 16), rank=8, group_size=32)
    assert plan.block_bits() == [16, 16, 16]
    # At group 32, 2/4/16 bits store 3/5/16 bits a weight: 27 in all fits one 16 and two 4s.
    plan = knapsack_plan(structure, sens, parse_budget("9bits"), bits=(2, 4, 16), rank=8, group_size=32)
    assert sorted(plan.block_bits()) == [4, 4, 16]
    assert plan.block_bits()[int(np.argmax(sens.column(2)))] == 16


def test_plan_round_trips_and_its_memory_matches_the_table(llama_factory) -> None:
    model = llama_factory(layers=6)
    structure = inspect_model(model)
    plan = knapsack_plan(structure, _sensitivity(6, seed=3), parse_budget("3.6bits"), rank=8, group_size=32)
    assert plan.name == "knapsack-3.6bits-r8" and plan.model_signature == structure.signature
    assert Plan.from_json(plan.to_json()) == plan
    report = plan_memory(structure, plan)
    table = _table(model)
    genome = table.space.from_plan(plan)
    assert report.total_bytes == int(table.bytes_of(genome)) and report.avg_bits <= 3.6
    # The most sensitive blocks get the bits.
    kl2 = _sensitivity(6, seed=3).column(2)
    bits = plan.block_bits()
    assert bits[int(np.argmax(kl2))] == max(bits) and bits[int(np.argmin(kl2))] == min(bits)


def test_module_sized_problem_beats_uniform_within_its_bytes() -> None:
    """30 blocks x 7 linears x 6 bit-widths at SmolLM2's linear sizes (benchmarks/knapsack.py times it)."""
    numel = np.tile([331776, 110592, 110592, 331776, 884736, 884736, 884736], 30)  # (210,)
    bits = np.array([2, 3, 4, 5, 6, 8])
    costs = (numel[:, None] * (2 * bits[None, :] + 1)).astype(np.int64)  # half-bits: b + 0.5 metadata
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 1, (210, 1)) * 4.0 ** -(bits[None, :] - 2.0)
    capacity = int(2 * 4.5 * numel.sum())  # uniform 4-bit exactly
    picked = solve_mckp(costs, values, capacity)
    rows = np.arange(210)
    assert picked is not None and costs[rows, picked].sum() <= capacity
    uniform = values[:, 2].sum()
    assert values[rows, picked].sum() < 0.8 * uniform  # bits moved to where the KL is


def test_dominated_choices_are_dropped_before_the_programme() -> None:
    from qradaptor.search.knapsack import _drop_dominated

    costs = np.array([[1, 2, 2, 3, 1], [5, 5, 1, 1, 1]])
    values = np.array([[1.0, 1.0, 0.5, 0.5, np.inf], [0.2, 0.2, 0.9, 0.9, 0.1]])
    kept = np.isfinite(_drop_dominated(costs, values))
    # Row 0: choice 1 costs more for the same value than 0; 3 more than 2; 4 is forbidden.
    # Row 1: 4 beats every other (cheapest, least value); equal twins keep the lower index.
    assert kept.tolist() == [[True, False, True, False, False], [False, False, False, False, True]]
    assert solve_mckp(costs, values, 3).tolist() == [2, 4]
