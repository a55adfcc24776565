"""Search space, memory table, budget parsing and repair on a tiny Llama (meta device, no weights)."""

from __future__ import annotations

import numpy as np
import pytest

from qradaptor.memory import plan_memory
from qradaptor.plan import LayerSpec, Plan
from qradaptor.search.budget import Budget, parse_budget, repair, violation, violations
from qradaptor.search.space import MemoryTable, SearchSpace, smallest_and_largest


@pytest.fixture(scope="module")
def structure(llama_factory):
    from qradaptor.models.structure import inspect_model

    return inspect_model(llama_factory())


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace(num_blocks=3)


@pytest.fixture(scope="module")
def table(structure, space) -> MemoryTable:
    return MemoryTable.build(structure, space)


def random_genome(rng: np.random.Generator, space: SearchSpace) -> np.ndarray:
    return np.stack(
        [
            rng.integers(0, len(space.bit_choices), space.num_units),
            rng.integers(0, len(space.rank_choices), space.num_units),
        ],
        axis=1,
    )


# ----- SearchSpace ------------------------------------------------------------------
def test_space_validation_errors() -> None:
    with pytest.raises(ValueError, match=r"bits must be a non-empty tuple.*\(\)"):
        SearchSpace(num_blocks=2, bits=())
    with pytest.raises(ValueError, match=r"1\.\.8 or 16.*got 12"):
        SearchSpace(num_blocks=2, bits=(2, 12))
    with pytest.raises(ValueError, match=r"ranks.*>= 0.*got -4"):
        SearchSpace(num_blocks=2, ranks=(-4, 8))
    with pytest.raises(ValueError, match=r"sorted ascending without repeats, got \(4, 2\)"):
        SearchSpace(num_blocks=2, bits=(4, 2))
    with pytest.raises(ValueError, match=r"sorted ascending without repeats, got \(8, 8\)"):
        SearchSpace(num_blocks=2, ranks=(8, 8))
    with pytest.raises(ValueError, match="num_blocks must be a positive integer, got 0"):
        SearchSpace(num_blocks=0)
    with pytest.raises(ValueError, match="fixed_bits must be an integer in 1..8 or 16"):
        SearchSpace(num_blocks=2, fixed_bits=9)
    assert SearchSpace(num_blocks=1, bits=(2, 4, 16), ranks=(0, 8)).bits == (2, 4, 16)
    with pytest.raises(ValueError, match=r"modules must be a tuple of unique non-empty.*\('a', 'a'\)"):
        SearchSpace(num_blocks=2, modules=("a", "a"))
    with pytest.raises(ValueError, match=r"modules must be a tuple.*\['a'\]"):
        SearchSpace(num_blocks=2, modules=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="modules must be a tuple"):
        SearchSpace(num_blocks=2, modules=("a", ""))


def test_block_granularity_units(space: SearchSpace) -> None:
    assert space.granularity == "block" and space.modules == ()
    assert space.num_units == space.num_blocks == 3
    assert space.unit_names == ("0", "1", "2")
    assert space.unit_block.tolist() == [0, 1, 2]


def test_plan_round_trip(space: SearchSpace) -> None:
    genome = np.array([[0, 2], [3, 0], [1, 1]])
    plan = space.to_plan(genome, group_size=32)
    assert plan.block_bits() == [2, 8, 3]
    assert plan.block_ranks() == [16, 4, 8]
    assert plan.group_size == 32
    assert (space.from_plan(plan) == genome).all()


def test_from_plan_rejects_values_outside_the_choices(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match=r"block 1 has bits 16, not among the choices \(2, 3, 4, 8\)"):
        space.from_plan(Plan.from_lists([4, 16, 4], [8, 8, 8]))
    with pytest.raises(ValueError, match=r"block 0 has rank 32"):
        space.from_plan(Plan.from_lists([4, 4, 4], [32, 8, 8]))
    with pytest.raises(ValueError, match="genome indices must lie"):
        space.to_plan(np.array([[4, 0], [0, 0], [0, 0]]))
    with pytest.raises(
        ValueError, match=r"shape \(3, 2\) or \(n, 3, 2\), one row per block, got shape \(2, 2\)"
    ):
        space.to_plan(np.zeros((2, 2), dtype=int))
    module_plan = Plan({"0.mlp.up_proj": LayerSpec(4, 8)}, 3)
    with pytest.raises(ValueError, match="plan is per module, the search space per block"):
        space.from_plan(module_plan)


def test_fixed_choices_for_ablations() -> None:
    bits_only = SearchSpace(num_blocks=2, fixed_rank=16)
    assert bits_only.rank_choices == (16,)
    assert bits_only.to_plan(np.array([[0, 0], [2, 0]])).block_ranks() == [16, 16]
    rank_only = SearchSpace(num_blocks=2, fixed_bits=4)
    assert rank_only.to_plan(np.array([[0, 2], [0, 1]])).block_bits() == [4, 4]


# ----- MemoryTable ------------------------------------------------------------------
def test_table_by_hand(table: MemoryTable) -> None:
    # 4-bit, group 64: q/o 64x64 -> 2304 B, k/v 32x64 -> 1152 B, gate/up 128x64 and down 64x128
    # -> 4608 B each: 20736 B. Rank 8 in fp32: 8 * 4 * sum(in + out) = 32 * 1024 = 32768 B.
    assert table.unit_bytes[0, 2, 1] == 20736 + 32768
    assert (table.unit_bytes == table.unit_bytes[0]).all()  # identical blocks
    assert table.avg_bits_of(np.array([[2, 0]] * 3)) == pytest.approx(4.5)


def test_table_matches_plan_memory_exactly(structure, space: SearchSpace, table: MemoryTable) -> None:
    rng = np.random.default_rng(0)
    population = np.stack([random_genome(rng, space) for _ in range(20)])
    totals = table.bytes_of(population)
    avg = table.avg_bits_of(population)
    assert totals.shape == (20,)
    for genome, total, bits in zip(population, totals, avg, strict=True):
        report = plan_memory(structure, space.to_plan(genome))
        assert int(table.bytes_of(genome)) == report.total_bytes == int(total)
        assert bits == pytest.approx(report.avg_bits, rel=1e-12)


def test_table_passes_plan_options(structure) -> None:
    space = SearchSpace(num_blocks=3, bits=(2, 4, 16), ranks=(0, 8))
    table = MemoryTable.build(structure, space, weight_bytes=4, group_size=32, embed_bits=8, head_bits=8)
    genome = np.array([[0, 1], [2, 0], [1, 1]])
    report = plan_memory(
        structure, space.to_plan(genome, group_size=32, embed_bits=8, head_bits=8), weight_bytes=4
    )
    assert int(table.bytes_of(genome)) == report.total_bytes


# ----- budgets ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("3.5bits", "avg_bits", 3.5),
        (" 4BITS ", "avg_bits", 4.0),
        ("1.2GB", "bytes", 1.2e9),
        ("800MB", "bytes", 800e6),
        ("1.5GiB", "bytes", 1.5 * 2**30),
        ("512kib", "bytes", 512 * 1024),
    ],
)
def test_parse_budget(text: str, kind: str, value: float) -> None:
    budget = parse_budget(text)
    assert budget.kind == kind
    assert budget.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3.5", "number followed by 'bits'"),
        ("lots", "number followed by 'bits'"),
        ("12parsecs", "unit 'parsecs' is unknown"),
        ("4.0 bits", "with no space between; got '4.0 bits'"),
        ("4bit", r"as '4bits' \(scales and zeros included: uniform 4-bit at group size 64 stores 4\.5\)"),
        ("0GB", "must be > 0"),
        ("20bits", "at most 16"),
    ],
)
def test_parse_budget_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_budget(text)


def test_violation(table: MemoryTable) -> None:
    genome = np.array([[2, 1]] * 3)  # 4.5 avg bits
    assert violation(genome, Budget("avg_bits", 4.5), table) == 0.0
    assert violation(genome, Budget("avg_bits", 3.0), table) == pytest.approx(0.5)
    used = int(table.bytes_of(genome))
    assert violation(genome, Budget("bytes", used), table) == 0.0
    assert violation(genome, Budget("bytes", used / 2), table) == pytest.approx(1.0)
    assert (
        violations(np.stack([genome, genome]), Budget("avg_bits", 3.0), table).tolist()
        == [pytest.approx(0.5)] * 2
    )


# ----- repair -----------------------------------------------------------------------
def test_repair_never_returns_over_budget(space: SearchSpace, table: MemoryTable) -> None:
    low, high = smallest_and_largest(table, space)
    lo, hi = int(table.bytes_of(low)), int(table.bytes_of(high))
    rng = np.random.default_rng(0)
    for seed in range(30):
        genome = random_genome(rng, space)
        budget = Budget("bytes", float(rng.uniform(lo, hi)))
        sens = None if seed % 2 else rng.random(space.num_blocks)
        fixed = repair(np.random.default_rng(seed), genome, budget, table, sens)
        assert table.bytes_of(fixed) <= budget.value
        assert (fixed <= genome).all()  # only steps down
        bits_budget = Budget("avg_bits", float(rng.uniform(2.5, 8.5)))
        assert table.avg_bits_of(repair(rng, genome, bits_budget, table, sens)) <= bits_budget.value


def test_repair_lowers_least_sensitive_block_first(space: SearchSpace, table: MemoryTable) -> None:
    genome = np.array([[3, 2]] * 3)
    # 8.5 avg bits (8 + 32/64) -> 7.0 needs 4.5 bits off one block's 8.5: the least sensitive
    # block (1) steps 8 -> 4 (avg 7.17, still over) -> 3 (avg 6.83)
    fixed = repair(np.random.default_rng(0), genome, Budget("avg_bits", 7.0), table, [0.5, 0.1, 0.9])
    assert fixed.tolist() == [[3, 2], [1, 2], [3, 2]]
    feasible = np.array([[0, 0]] * 3)
    assert (repair(np.random.default_rng(0), feasible, Budget("avg_bits", 4.0), table) == feasible).all()


def test_repair_raises_with_smallest_memory(space: SearchSpace, table: MemoryTable) -> None:
    low, _ = smallest_and_largest(table, space)
    smallest = int(table.bytes_of(low))
    with pytest.raises(ValueError, match=f"smallest achievable memory of this search space is {smallest}"):
        repair(np.random.default_rng(0), low, Budget("bytes", smallest - 1), table)
    with pytest.raises(ValueError, match="is 2.5 avg bits"):
        repair(np.random.default_rng(0), low, Budget("avg_bits", 2.0), table)


def test_smallest_and_largest(space: SearchSpace, table: MemoryTable) -> None:
    low, high = smallest_and_largest(table, space)
    assert low.tolist() == [[0, 0]] * 3 and high.tolist() == [[3, 2]] * 3
    rng = np.random.default_rng(3)
    population = np.stack([random_genome(rng, space) for _ in range(50)])
    assert (table.bytes_of(population) >= table.bytes_of(low)).all()
    assert (table.bytes_of(population) <= table.bytes_of(high)).all()
