"""The knapsack at module granularity: brute force on small tables, tied (fused) groups, the
budget, bytes as built, and the errors of a table of the wrong granularity or model."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from qradaptor.build import apply_plan
from qradaptor.export.vllm_constraints import check_vllm_plan, fused_groups
from qradaptor.memory import model_tensor_bytes, plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.budget import Budget, parse_budget
from qradaptor.search.knapsack import knapsack_plan, tie_items, unit_values
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.sensitivity_table import SensitivityTable


def _module_table(structure, seed: int = 0, bits=(2, 4, 8), group_size=32) -> SensitivityTable:
    """Random per-module KL, falling 4x a bit, modules differing by orders of magnitude."""
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0, 1.5, structure.num_blocks * len(structure.linear_names))
    kl = tuple(tuple(float(s * 4.0 ** -(b - 2)) for b in bits) for s in scale)
    return SensitivityTable(
        bits=tuple(bits),
        kl=kl,
        tokens=64,
        group_size=group_size,
        quant_method="hqq",
        granularity="module",
        modules=structure.linear_names,
    )


def _brute_force(structure, table, budget, tied=(), bits=(2, 4)):
    """Least summed KL over every module assignment within ``budget`` (tied groups equal)."""
    space = SearchSpace.for_structure(structure, "module", bits=bits, ranks=(8,))
    memory = MemoryTable.build(structure, space, group_size=32)
    values = unit_values(space, table)
    items = tie_items(space, tied)
    leaders = np.unique(items)
    combos = np.array(list(itertools.product(range(len(bits)), repeat=len(leaders))))  # (n, items)
    choice = combos[:, np.searchsorted(leaders, items)]  # (n, L)
    population = np.stack([choice, np.zeros_like(choice)], axis=2)  # (n, L, 2)
    within = (
        memory.avg_bits_of(population) <= budget.value + 1e-9
        if budget.kind == "avg_bits"
        else memory.bytes_of(population) <= budget.value
    )
    totals = values[np.arange(space.num_units), choice].sum(axis=1)  # (n,)
    return totals[within].min(), space, values


def _summed(plan: Plan, space: SearchSpace, values) -> float:
    genome = space.from_plan(plan)
    return float(values[np.arange(space.num_units), genome[:, 0]].sum())


@pytest.mark.parametrize("budget", ["3.2bits", "4.0bits", "4.6bits"])
def test_module_knapsack_equals_brute_force(llama_factory, budget: str) -> None:
    structure = inspect_model(llama_factory(layers=2))  # 14 modules x 2 bit-widths: 16,384 plans
    table = _module_table(structure, seed=1, bits=(2, 4))
    parsed = parse_budget(budget)
    best, space, values = _brute_force(structure, table, parsed)
    plan = knapsack_plan(structure, table, parsed, rank=8, granularity="module", group_size=32)
    assert plan.granularity == "module" and plan.name == f"knapsack-module-{parsed.value:g}bits-r8"
    assert _summed(plan, space, values) == pytest.approx(best)
    assert plan_memory(structure, plan).avg_bits <= parsed.value + 1e-9
    # Per module, not per block: the optimum mixes bits within a block.
    if budget != "3.2bits":
        assert any(len({plan.spec_for(b, n).bits for n in structure.linear_names}) > 1 for b in range(2))


def test_tied_groups_share_a_choice_and_equal_brute_force(llama_factory) -> None:
    structure = inspect_model(llama_factory(layers=2))
    tied = fused_groups(structure)  # q/k/v and gate/up: 4 items a block, 8 in all: 6,561 plans
    table = _module_table(structure, seed=2)
    for budget in ("3.5bits", "4.6bits", "6bits"):
        parsed = parse_budget(budget)
        best, space, values = _brute_force(structure, table, parsed, tied, bits=(2, 4, 8))
        plan = knapsack_plan(structure, table, parsed, rank=8, granularity="module", group_size=32, tied=tied)
        assert _summed(plan, space, values) == pytest.approx(best)
        for block in range(2):
            for group in tied:
                assert len({plan.spec_for(block, name).bits for name in group}) == 1


def test_serve_vllm_module_plan_passes_vllm_check(llama_factory) -> None:
    structure = inspect_model(llama_factory(layers=3))
    table = _module_table(structure, seed=3, bits=(4, 8))
    plan = knapsack_plan(
        structure,
        table,
        parse_budget("6bits"),
        bits=(4, 8, 16),
        rank=8,
        granularity="module",
        group_size=32,
        tied=fused_groups(structure),
    )
    check_vllm_plan(plan, structure)  # raises if a fused group were split
    assert {spec.bits for spec in plan.layers.values()} > {4}


@pytest.mark.parametrize("seed", range(8))
def test_never_exceeds_the_budget_and_builds_as_priced(llama_factory, seed: int) -> None:
    model = llama_factory(layers=3)
    structure = inspect_model(model)
    rng = np.random.default_rng(seed)
    table = _module_table(structure, seed=seed)
    budget = parse_budget(f"{rng.uniform(3.0, 8.5):.3f}bits")
    plan = knapsack_plan(structure, table, budget, rank=8, granularity="module", group_size=32)
    predicted = plan_memory(structure, plan, weight_bytes=4)
    assert predicted.avg_bits <= budget.value + 1e-9
    assert Plan.from_json(plan.to_json()) == plan
    assert predicted.total_bytes == model_tensor_bytes(apply_plan(model, plan))
    # and under a byte budget, adapters counted
    bytes_budget = Budget("bytes", float(predicted.total_bytes))
    by_bytes = knapsack_plan(structure, table, bytes_budget, rank=8, granularity="module", group_size=32)
    assert plan_memory(structure, by_bytes).total_bytes <= bytes_budget.value


def test_the_smallest_reachable_budget_is_named(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    with pytest.raises(ValueError, match=r"below the smallest plan of the search space: 3 avg bits"):
        knapsack_plan(
            structure, _module_table(structure), parse_budget("2.9bits"), granularity="module", group_size=32
        )


def test_a_table_of_the_wrong_granularity_is_refused(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    module_table = _module_table(structure)
    block_table = SensitivityTable(
        bits=(2, 4, 8), kl=((1.0, 0.1, 0.01),) * 3, tokens=8, group_size=32, quant_method="hqq"
    )
    with pytest.raises(
        ValueError,
        match=r"at block granularity takes a per-block sensitivity table.*got a "
        r"per-module one \(7 linears x 3 blocks\)",
    ):
        knapsack_plan(structure, module_table, parse_budget("4bits"), group_size=32)
    with pytest.raises(
        ValueError,
        match=r"at module granularity takes a per-module sensitivity table \(qra "
        r"profile --granularity module\), got a per-block one \(3 blocks\)",
    ):
        knapsack_plan(structure, block_table, parse_budget("4bits"), granularity="module", group_size=32)


def test_a_table_of_another_model_or_bits_is_refused(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    other = inspect_model(llama_factory(layers=4))
    with pytest.raises(ValueError, match="sensitivity table has 4 blocks, the model 3"):
        knapsack_plan(
            structure, _module_table(other), parse_budget("4bits"), granularity="module", group_size=32
        )
    renamed = dataclasses.replace(_module_table(structure), modules=tuple("abcdefg"))
    with pytest.raises(ValueError, match=r"profiled modules \('a', .* it was profiled on another model"):
        knapsack_plan(structure, renamed, parse_budget("4bits"), granularity="module", group_size=32)
    with pytest.raises(ValueError, match=r"lacks bits \[3\] of the choices \(2, 3, 4, 8\)"):
        knapsack_plan(
            structure,
            _module_table(structure),
            parse_budget("4bits"),
            bits=(2, 3, 4, 8),
            granularity="module",
            group_size=32,
        )
    with pytest.raises(ValueError, match="tied groups must name distinct linears"):
        knapsack_plan(
            structure,
            _module_table(structure),
            parse_budget("4bits"),
            granularity="module",
            group_size=32,
            tied=[("self_attn.q_proj", "self_attn.nope")],
        )


def test_the_block_path_is_unchanged(llama_factory) -> None:
    """A block table at block granularity gives the plan it gave before (hand-checked case of
    test_knapsack.py), and tying changes nothing per block."""
    structure = inspect_model(llama_factory())
    kl = ((1.0, 0.5, 0.0), (2.0, 0.1, 0.0), (0.3, 0.2, 0.0))
    table = SensitivityTable(bits=(2, 4, 8), kl=kl, tokens=8, group_size=32, quant_method="hqq")
    plan = knapsack_plan(structure, table, parse_budget("3.7bits"), rank=8, group_size=32)
    # 2/4/8 bits store 3/5/9 at group 32: 11.1 in all buys one 4 -> the block whose KL falls most.
    assert plan.block_bits() == [2, 4, 2] and plan.granularity == "block"
    assert plan.name == "knapsack-3.7bits-r8"
    tied = knapsack_plan(
        structure, table, parse_budget("3.7bits"), rank=8, group_size=32, tied=fused_groups(structure)
    )
    assert tied == plan


def test_the_search_refuses_a_module_table(llama_factory) -> None:
    from qradaptor.search.definition import SearchConfig
    from qradaptor.search.profiling import check_given_profile

    structure = inspect_model(llama_factory())
    config = SearchConfig(budget=parse_budget("4bits"), bits=(2, 4, 8))
    space = SearchSpace.for_structure(structure, "block", bits=(2, 4, 8))
    with pytest.raises(
        ValueError,
        match=r"the halving search at block granularity takes a per-block sensitivity table .*per-module",
    ):
        check_given_profile(_module_table(structure), structure, space, config)
