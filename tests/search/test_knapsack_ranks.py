"""The knapsack that chooses ranks as well as bits from a measured rank benefit (search/knapsack_ranks.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qradaptor.memory import plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.budget import Budget, parse_budget, violation
from qradaptor.search.knapsack import knapsack_genome, knapsack_plan, unit_values
from qradaptor.search.knapsack_ranks import (
    benefit_from_losses,
    bytes_left_to_ranks,
    check_rank_benefit,
    knapsack_genome_ranks,
    parse_rank_benefit,
)
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.sensitivity_table import SensitivityTable

BITS, RANKS = (2, 3, 4, 8), (4, 8, 16)


def _setup(model, layers: int, seed: int = 0):
    structure = inspect_model(model)
    space = SearchSpace.for_structure(structure, "block", bits=BITS, ranks=RANKS)
    table = MemoryTable.build(structure, space, group_size=32)
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(-3, 1.5, layers)
    kl = tuple(tuple(float(s * 4.0 ** -(b - 2)) for b in BITS) for s in scale)
    sens = SensitivityTable(bits=BITS, kl=kl, tokens=64, group_size=32, quant_method="hqq")
    return structure, table, sens, unit_values(space, sens)


def _objective(genome, values, gain) -> float:
    units = np.arange(genome.shape[0])
    return float(values[units, genome[:, 0]].sum() - gain[genome[:, 1]].sum())


@pytest.mark.parametrize("seed", range(6))
def test_joint_knapsack_equals_brute_force_over_bits_and_ranks(llama_factory, seed: int) -> None:
    structure, table, _, values = _setup(llama_factory(layers=3), 3, seed)
    rng = np.random.default_rng(100 + seed)
    benefit = {4: 0.0, 8: float(rng.uniform(0, 0.2)), 16: float(rng.uniform(0, 0.4))}
    gain = np.array([benefit[r] for r in RANKS]) / 3
    lowest = int(table.bytes_of(np.zeros((3, 2), dtype=np.int64)))
    highest = int(table.bytes_of(np.stack([np.full(3, 3), np.full(3, 2)], axis=1)))
    budget = Budget("bytes", float(lowest + (highest - lowest) * rng.uniform(0.2, 0.8)))
    genome = knapsack_genome_ranks(table, values, budget, benefit)
    assert violation(genome, budget, table) == 0
    best = min(
        _objective(np.array(g).reshape(3, 2), values, gain)
        for g in itertools.product(*[list(itertools.product(range(4), range(3)))] * 3)
        if violation(np.array(g).reshape(3, 2), budget, table) == 0
    )
    assert _objective(genome, values, gain) == pytest.approx(best)


def test_no_benefit_spends_the_rank_bytes_on_bits(llama_factory) -> None:
    # The seventh GPU run's 120 MB case: with rank worth nothing the plan is the smallest
    # rank's knapsack plan, with more bits than the largest rank's.
    structure, table, _, values = _setup(llama_factory(layers=5), 5)
    low16 = np.stack([np.zeros(5, dtype=np.int64), np.full(5, 2)], axis=1)
    budget = Budget("bytes", float(table.bytes_of(low16) + 4000))
    genome = knapsack_genome_ranks(table, values, budget, {4: 0.0, 8: 0.0, 16: 0.0})
    assert (genome[:, 1] == 0).all()
    assert (genome == knapsack_genome(table, values, budget, rank=4)).all()
    assert genome[:, 0].sum() > knapsack_genome(table, values, budget, rank=16)[:, 0].sum()


def test_a_large_benefit_buys_the_rank_and_avg_bits_gives_rank_for_free(llama_factory) -> None:
    structure, table, _, values = _setup(llama_factory(layers=5), 5)
    high = np.stack([np.full(5, 3), np.full(5, 2)], axis=1)
    budget = Budget("bytes", float(table.bytes_of(high)))
    assert (knapsack_genome_ranks(table, values, budget, {4: 0.0, 8: 5.0, 16: 10.0})[:, 1] == 2).all()
    # Under avg bits rank costs no bits: the rank of most benefit wins at the same bits.
    genome = knapsack_genome_ranks(table, values, parse_budget("3.5bits"), {4: 0.0, 8: 1e-6, 16: 2e-6})
    assert (genome[:, 1] == 2).all()
    assert (genome[:, 0] == knapsack_genome(table, values, parse_budget("3.5bits"), rank=16)[:, 0]).all()


@pytest.mark.parametrize("seed", range(6))
def test_bytes_left_to_ranks_is_least_kl_then_largest_ranks(llama_factory, seed: int) -> None:
    # The default under a byte budget: brute force over every plan within the budget, the least
    # summed KL first, then the largest summed rank among the plans that reach it.
    structure, table, _, values = _setup(llama_factory(layers=3), 3, seed)
    rng = np.random.default_rng(200 + seed)
    lowest = int(table.bytes_of(np.zeros((3, 2), dtype=np.int64)))
    highest = int(table.bytes_of(np.stack([np.full(3, 3), np.full(3, 2)], axis=1)))
    budget = Budget("bytes", float(lowest + (highest - lowest) * rng.uniform(0.1, 1.0)))
    genome = knapsack_genome_ranks(table, values, budget, bytes_left_to_ranks(RANKS))
    assert violation(genome, budget, table) == 0
    units = np.arange(3)
    fits = [
        np.array(g).reshape(3, 2)
        for g in itertools.product(*[list(itertools.product(range(4), range(3)))] * 3)
        if violation(np.array(g).reshape(3, 2), budget, table) == 0
    ]
    least = min(float(values[units, g[:, 0]].sum()) for g in fits)
    assert float(values[units, genome[:, 0]].sum()) == pytest.approx(least, rel=1e-12)
    reach = [g for g in fits if float(values[units, g[:, 0]].sum()) <= least * (1 + 1e-12)]
    assert sum(RANKS[j] for j in genome[:, 1]) == max(sum(RANKS[j] for j in g[:, 1]) for g in reach)


def test_bytes_left_to_ranks_orders_the_ranks_and_refuses_bad_ones() -> None:
    assert bytes_left_to_ranks() == pytest.approx({4: 0.0, 8: 4e-10, 16: 1.2e-9})
    assert bytes_left_to_ranks((16, 0)) == pytest.approx({0: 0.0, 16: 1.6e-9})
    for bad in ((), (4, 4), (-1, 4)):
        with pytest.raises(ValueError, match="distinct integers >= 0"):
            bytes_left_to_ranks(bad)


def test_plan_names_its_ranks_and_its_memory_is_the_tables(llama_factory) -> None:
    model = llama_factory(layers=6)
    structure, table, sens, _ = _setup(model, 6, seed=2)
    budget = Budget("bytes", float(table.bytes_of(np.zeros((6, 2), dtype=np.int64)) + 6000))
    plan = knapsack_plan(structure, sens, budget, group_size=32, rank_benefit={16: 0.0, 4: 0.0, 8: 0.0})
    assert plan.name.endswith("-ranks") and set(plan.block_ranks()) == {4}
    assert Plan.from_json(plan.to_json()) == plan
    assert plan_memory(structure, plan).total_bytes == int(table.bytes_of(table.space.from_plan(plan)))


def test_benefit_from_losses_and_parsing() -> None:
    assert benefit_from_losses({8: 3.0, 4: 3.1, 16: 3.2}) == pytest.approx({4: 0.0, 8: 0.1, 16: -0.1})
    assert parse_rank_benefit("4:0, 8:0.002,16:-0.001") == {4: 0.0, 8: 0.002, 16: -0.001}
    for bad, message in [
        ("4:0,4:1", "rank 4 twice"),
        ("4", "RANK:NATS"),
        ("x:1", "RANK:NATS"),
        ("4:nan", "RANK:NATS"),
        ("-4:0", "RANK:NATS"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rank_benefit(bad)
    with pytest.raises(ValueError, match="finite"):
        benefit_from_losses({4: 3.0, 8: float("inf")})
    with pytest.raises(ValueError, match="at least one"):
        check_rank_benefit({})


def test_a_benefit_for_other_ranks_and_a_budget_below_the_smallest_plan_are_refused(llama_factory) -> None:
    structure, table, _, values = _setup(llama_factory(layers=4), 4)
    with pytest.raises(ValueError, match=r"prices ranks \[4, 8\], the space's rank choices are \[4, 8, 16\]"):
        knapsack_genome_ranks(table, values, parse_budget("4bits"), {4: 0.0, 8: 0.1})
    with pytest.raises(ValueError, match="smallest achievable memory"):
        knapsack_genome_ranks(table, values, Budget("bytes", 1000.0), {4: 0.0, 8: 0.0, 16: 0.0})
