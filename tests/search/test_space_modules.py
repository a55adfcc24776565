"""Module granularity of the search space: one (bits, rank) per linear of each block, on a tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest

from qradaptor.memory import plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan
from qradaptor.search.budget import Budget, repair, violations
from qradaptor.search.evolve import run_nsga2
from qradaptor.search.initial import initial_population
from qradaptor.search.space import MemoryTable, SearchSpace, smallest_and_largest, unit_sensitivity

NAMES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
M = len(NAMES)


@pytest.fixture(scope="module")
def structure(llama_factory):
    return inspect_model(llama_factory())  # 3 blocks


@pytest.fixture(scope="module")
def space(structure) -> SearchSpace:
    return SearchSpace.for_structure(structure, "module")


@pytest.fixture(scope="module")
def table(structure, space) -> MemoryTable:
    return MemoryTable.build(structure, space)


def random_genomes(rng: np.random.Generator, space: SearchSpace, n: int) -> np.ndarray:
    sizes = np.array([len(space.bit_choices), len(space.rank_choices)])
    return rng.integers(0, sizes, size=(n, space.num_units, 2))


# ----- the space ----------------------------------------------------------------------
def test_for_structure_fills_blocks_and_modules(structure, space: SearchSpace) -> None:
    assert structure.linear_names == NAMES
    assert space.granularity == "module" and space.modules == NAMES
    assert space.num_blocks == 3 and space.num_units == 3 * M
    assert space.unit_names[:2] == ("0.self_attn.q_proj", "0.self_attn.k_proj")
    assert space.unit_names[M] == "1.self_attn.q_proj" and space.unit_names[-1] == "2.mlp.down_proj"
    assert space.unit_block.tolist() == [0] * M + [1] * M + [2] * M
    by_block = SearchSpace.for_structure(structure, bits=(2, 4), ranks=(8,), fixed_rank=16)
    assert by_block == SearchSpace(3, (2, 4), (8,), fixed_rank=16)
    assert by_block.granularity == "block" and by_block.unit_names == ("0", "1", "2")


def test_bad_granularity_is_named(structure) -> None:
    with pytest.raises(ValueError, match=r"granularity must be one of \('block', 'module'\), got 'layer'"):
        SearchSpace.for_structure(structure, "layer")  # type: ignore[arg-type]


def test_module_genome_round_trips_through_a_module_plan(structure, space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    for genome in random_genomes(rng, space, 10):
        plan = space.to_plan(genome, group_size=32, alpha=8.0)
        assert plan.granularity == "module" and plan.group_size == 32 and plan.alpha == 8.0
        assert tuple(plan.layers) == space.unit_names
        plan.validate(structure)  # keys name real linears
        u = int(rng.integers(space.num_units))
        block, module = divmod(u, M)
        assert plan.spec_for(block, NAMES[module]) == LayerSpec(
            space.bits[genome[u, 0]], space.ranks[genome[u, 1]]
        )
        assert np.array_equal(space.from_plan(plan), genome)


def test_from_plan_module_errors_and_block_plans(space: SearchSpace) -> None:
    genome = np.zeros((space.num_units, 2), dtype=np.int64)
    layers = dict(space.to_plan(genome).layers)
    del layers["1.mlp.up_proj"]
    with pytest.raises(ValueError, match=r"missing \['1.mlp.up_proj'\] \(1 in all\), unexpected \[\]"):
        space.from_plan(Plan(layers, 3))
    layers["1.mlp.up_proj"] = LayerSpec(16, 4)
    with pytest.raises(ValueError, match=r"module 1.mlp.up_proj has bits 16, not among the choices"):
        space.from_plan(Plan(layers, 3))
    # a block plan gives every module its block's choice
    expanded = space.from_plan(Plan.from_lists([2, 8, 4], [4, 16, 8]))
    assert expanded.tolist() == [[0, 0]] * M + [[3, 2]] * M + [[2, 1]] * M


# ----- the memory table ---------------------------------------------------------------
def test_module_table_by_hand(structure, space: SearchSpace, table: MemoryTable) -> None:
    assert table.unit_bytes.shape == (3 * M, 4, 3) and table.unit_bit_weights.shape == (3 * M, 4)
    # q_proj 64x64 at 4-bit, group 64: 64 * 64 / 2 codes + 64 rows * 1 group * 4 B = 2304 B;
    # rank 8 in fp32: 8 * (64 + 64) * 4 = 4096 B. down_proj 64x128: 4096 + 512, 8 * 192 * 4.
    assert table.unit_bytes[0, 2, 1] == 2304 + 4096
    assert table.unit_bytes[M - 1, 2, 1] == 4608 + 6144
    # the modules of a block add up to the block table's row
    blocks = MemoryTable.build(structure, SearchSpace(num_blocks=3))
    assert np.array_equal(table.unit_bytes.reshape(3, M, 4, 3).sum(axis=1), blocks.unit_bytes)
    assert np.allclose(table.unit_bit_weights.reshape(3, M, 4).sum(axis=1), blocks.unit_bit_weights)
    assert table.constant_bytes == blocks.constant_bytes and table.linear_numel == blocks.linear_numel


def test_module_table_matches_plan_memory_exactly(structure, space: SearchSpace, table: MemoryTable) -> None:
    population = random_genomes(np.random.default_rng(1), space, 20)
    totals, avg = table.bytes_of(population), table.avg_bits_of(population)
    assert totals.shape == (20,) and len(set(totals.tolist())) > 10  # genomes really differ in memory
    for genome, total, bits in zip(population, totals, avg, strict=True):
        report = plan_memory(structure, space.to_plan(genome))
        assert int(table.bytes_of(genome)) == report.total_bytes == int(total)
        assert bits == pytest.approx(report.avg_bits, rel=1e-12)


def test_module_table_with_plan_options_on_an_untied_model(llama_factory) -> None:
    structure = inspect_model(llama_factory(tied=False))
    space = SearchSpace.for_structure(structure, "module", bits=(2, 4, 16), ranks=(0, 8))
    options = dict(group_size=32, embed_bits=8, head_bits=4)
    table = MemoryTable.build(structure, space, weight_bytes=4, **options)
    for genome in random_genomes(np.random.default_rng(2), space, 10):
        report = plan_memory(structure, space.to_plan(genome, **options), weight_bytes=4)
        assert int(table.bytes_of(genome)) == report.total_bytes


def test_table_rejects_modules_that_are_not_the_models(structure) -> None:
    for modules in (NAMES[::-1], NAMES[:3], ("self_attn.q_proj", "attn.c_attn")):
        space = SearchSpace(num_blocks=3, modules=modules)
        with pytest.raises(ValueError, match=r"space.modules must equal the model's linear names") as err:
            MemoryTable.build(structure, space)
        assert str(NAMES) in str(err.value) and str(modules) in str(err.value)


# ----- sensitivity, repair, initial population ----------------------------------------
def test_unit_sensitivity(space: SearchSpace) -> None:
    assert unit_sensitivity(space, [0.1, 0.5, 0.9]).tolist() == [0.1] * M + [0.5] * M + [0.9] * M
    block_space = SearchSpace(num_blocks=3)
    assert unit_sensitivity(block_space, [3, 1, 2]).tolist() == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"one value per block \(3\), got shape \(21,\)"):
        unit_sensitivity(space, np.ones(3 * M))


def test_repair_yields_feasible_module_genomes(space: SearchSpace, table: MemoryTable) -> None:
    low, high = smallest_and_largest(table, space)
    assert low.shape == high.shape == (3 * M, 2)
    lo, hi = int(table.bytes_of(low)), int(table.bytes_of(high))
    rng = np.random.default_rng(3)
    for seed, genome in enumerate(random_genomes(rng, space, 20)):
        budget = Budget("bytes", float(rng.uniform(lo, hi)))
        sens = None if seed % 2 else unit_sensitivity(space, rng.random(3))
        fixed = repair(np.random.default_rng(seed), genome, budget, table, sens)
        assert fixed.shape == (3 * M, 2) and table.bytes_of(fixed) <= budget.value
        assert (fixed <= genome).all()


def test_repair_lowers_modules_of_the_least_sensitive_block_first(space: SearchSpace, table) -> None:
    top = np.tile([3, 2], (space.num_units, 1))
    # a budget just under the maximum: only a few steps are needed, all in block 1
    budget = Budget("bytes", float(table.bytes_of(top)) - 10_000)
    fixed = repair(np.random.default_rng(0), top, budget, table, unit_sensitivity(space, [0.5, 0.1, 0.9]))
    changed = np.flatnonzero((fixed != top).any(axis=1))
    assert changed.size > 0 and set(space.unit_block[changed].tolist()) == {1}
    with pytest.raises(ValueError, match=r"shape \(21,\), one value per module, got \(3,\)"):
        repair(np.random.default_rng(0), top, budget, table, [0.5, 0.1, 0.9])


def test_initial_population_of_module_genomes(space: SearchSpace, table: MemoryTable) -> None:
    budget = Budget("avg_bits", 3.5)
    sens = unit_sensitivity(space, [0.0, 0.5, 1.0])
    pop = initial_population(np.random.default_rng(4), 40, table, budget, sens)
    assert pop.shape == (40, 3 * M, 2)
    assert np.all(violations(pop, budget, table) == 0)
    # Between uniform 4 and 8 bits: the budget decides which modules get 8 bits.
    loose = initial_population(np.random.default_rng(4), 200, table, Budget("avg_bits", 6.0), sens)
    mean_bits = loose[:, :, 0].mean(axis=0).reshape(3, M).mean(axis=1)  # per block
    assert mean_bits[2] > mean_bits[0] + 1.5  # the sensitive block's modules get more bits
    with pytest.raises(ValueError, match=r"one value per module \(21\), got 3"):
        initial_population(np.random.default_rng(0), 2, table, budget, [0.0, 0.5, 1.0])


# ----- the search -----------------------------------------------------------------------
MODULE_WEIGHTS = np.tile([3.0, 0.2, 0.2, 1.0, 0.5, 0.5, 1.0], 3)  # q_proj matters most, k/v least


def synthetic(plan: Plan) -> float:
    """sum_u w_u / bits_u + 0.01 sum_u 1 / rank_u over the module units."""
    assert plan.granularity == "module"
    specs = list(plan.layers.values())
    bits = np.array([s.bits for s in specs], dtype=np.float64)
    ranks = np.array([s.rank for s in specs], dtype=np.float64)
    return float((MODULE_WEIGHTS / bits).sum() + 0.01 * (1.0 / ranks).sum())


def test_nsga2_searches_a_module_space(space: SearchSpace, table: MemoryTable) -> None:
    low, high = smallest_and_largest(table, space)
    lo, hi = float(table.bytes_of(low)), float(table.bytes_of(high))
    budget = Budget("bytes", lo + 0.35 * (hi - lo))
    res = run_nsga2(
        synthetic,
        space,
        table,
        budget,
        population=6,
        offspring=3,
        generations=8,
        sensitivity=unit_sensitivity(space, [0.2, 0.5, 1.0]),
        seed=0,
    )
    for trial in res.trials:
        genome = np.array(trial.genome, dtype=np.int64)
        assert genome.shape == (3 * M, 2)
        assert trial.bytes == int(table.bytes_of(genome)) <= budget.value
    best = space.to_plan(np.array(res.best.genome, dtype=np.int64))
    assert best.granularity == "module" and best.plan_hash == res.best.plan_hash
    assert res.best.loss == pytest.approx(synthetic(best))
    assert res.best.loss <= min(t.loss for t in res.trials if t.generation == 0)
    # the modules of a block got different choices somewhere: the search used the finer grain
    per_block = np.array(res.best.genome).reshape(3, M, 2)
    assert any(len({tuple(row) for row in block}) > 1 for block in per_block)
    with pytest.raises(ValueError, match=r"21 finite values, one per module \(see space.unit_sensitivity\)"):
        run_nsga2(synthetic, space, table, budget, sensitivity=[0.2, 0.5, 1.0])
