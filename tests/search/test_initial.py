from __future__ import annotations

import numpy as np
import pytest

from qradaptor.models.structure import inspect_model
from qradaptor.search.budget import Budget, violations
from qradaptor.search.initial import initial_population, normalise
from qradaptor.search.space import MemoryTable, SearchSpace


@pytest.fixture(scope="module")
def table(llama_factory) -> MemoryTable:
    structure = inspect_model(llama_factory(layers=6))
    return MemoryTable.build(structure, SearchSpace(num_blocks=6))


def test_sensitive_blocks_get_more_bits_and_rank(table) -> None:
    budget = Budget("avg_bits", 6.0)  # between uniform 4-bit (4.5) and 8-bit (8.5): who gets 8 bits?
    sensitivity = np.array([0.0, 0.1, 0.2, 0.5, 0.9, 1.0])
    pop = initial_population(np.random.default_rng(0), 400, table, budget, sensitivity)
    assert pop.shape == (400, 6, 2)
    mean = pop.mean(axis=0)  # (L, 2)
    assert mean[-1, 0] > mean[0, 0] + 1.5 and mean[-1, 1] > mean[0, 1] + 1.0
    assert np.all(np.diff(mean[:, 0]) >= -0.15)  # non-decreasing with sensitivity, up to noise


def test_every_individual_meets_the_budget(table) -> None:
    for budget in (
        Budget("avg_bits", 3.5),
        Budget("bytes", float(table.bytes_of(np.zeros((6, 2), int)) * 1.1)),
    ):
        pop = initial_population(np.random.default_rng(1), 50, table, budget, np.arange(6.0))
        assert np.all(violations(pop, budget, table) == 0)


def test_every_individual_is_filled_up_to_the_budget(table) -> None:
    budget = Budget("avg_bits", 5.0)
    pop = initial_population(np.random.default_rng(2), 30, table, budget, np.arange(6.0))
    used = table.avg_bits_of(pop)
    assert np.all(used <= 5.0)
    for genome in pop:  # no single bits step up still fits
        for unit in range(6):
            if genome[unit, 0] < 3:
                up = genome.copy()
                up[unit, 0] += 1
                assert table.avg_bits_of(up) > 5.0


def test_deterministic_by_seed_and_uniform_without_profile(table) -> None:
    budget = Budget("avg_bits", 6.0)
    a = initial_population(np.random.default_rng(7), 20, table, budget, np.arange(6.0))
    b = initial_population(np.random.default_rng(7), 20, table, budget, np.arange(6.0))
    assert np.array_equal(a, b)
    flat = initial_population(np.random.default_rng(0), 600, table, budget, None).mean(axis=0)
    assert np.ptp(flat[:, 0]) < 0.4  # no depth trend without a profile


def test_bad_inputs(table) -> None:
    with pytest.raises(ValueError, match="size must be >= 1"):
        initial_population(np.random.default_rng(0), 0, table, Budget("avg_bits", 4.0))
    with pytest.raises(ValueError, match=r"one value per block \(6\), got 3"):
        initial_population(np.random.default_rng(0), 2, table, Budget("avg_bits", 4.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="smallest achievable"):
        initial_population(np.random.default_rng(0), 2, table, Budget("avg_bits", 1.0))
    assert normalise([2.0, 2.0]).tolist() == [0.5, 0.5]
