"""Gaussian-process refinement: the encoding, the Matérn-5/2 GP, Expected Improvement, the pool."""

from __future__ import annotations

import numpy as np
import pytest

from qradaptor.models.structure import inspect_model
from qradaptor.search.bayes import (
    BayesConfig,
    choose_batch,
    encode,
    fit_gp,
    front_members,
    log_expected_improvement,
    neighbourhood,
    refine,
)
from qradaptor.search.budget import parse_budget, violations
from qradaptor.search.initial import initial_population
from qradaptor.search.space import MemoryTable, SearchSpace

L = 6


@pytest.fixture(scope="module")
def table(llama_factory) -> MemoryTable:
    structure = inspect_model(llama_factory(layers=L))
    return MemoryTable.build(
        structure, SearchSpace.for_structure(structure, bits=(2, 3, 4, 8), ranks=(4, 8, 16))
    )


def synthetic_loss(genome: np.ndarray) -> float:
    """Deeper units gain more from bits; rank helps a little: a smooth landscape to refine on."""
    weights = np.linspace(0.2, 1.0, genome.shape[0])
    return float(np.sum(weights / (1.0 + genome[:, 0])) + 0.05 * np.sum(1.0 / (1.0 + genome[:, 1])))


def test_encoding_scales_indices_to_the_unit_interval_and_drops_fixed_genes() -> None:
    space = SearchSpace(num_blocks=2, bits=(2, 4, 8), ranks=(4, 8))
    x = encode(np.array([[0, 1], [2, 0]]), space)
    assert x.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    bits_only = SearchSpace(num_blocks=2, bits=(2, 4, 8), fixed_rank=16)
    assert encode(np.array([[[1, 0], [2, 0]]]), bits_only).tolist() == [[0.5, 1.0]]


def test_the_gp_is_matern_five_halves_and_ei_favours_the_unexplored_low_region() -> None:
    x = np.array([[0.0], [0.2], [0.8], [1.0]])
    y = np.array([1.0, 0.8, 0.2, 0.1])  # falling towards x = 1
    model = fit_gp(x, y)
    assert model.covar_module.nu == 2.5
    assert model.covar_module.lengthscale.shape == (1, 1)
    ei = log_expected_improvement(model, np.array([[0.05], [0.5], [0.95]]), best=0.1)
    assert np.argmax(ei) == 2 and ei[2] > ei[0]


def test_front_members_are_the_non_dominated_feasible_finite_genomes(table) -> None:
    budget = parse_budget("6bits")
    g = np.zeros((4, L, 2), dtype=np.int64)
    g[1, :, 0] = 1  # more bytes, lower loss: on the front
    g[2, :, 0] = 1  # same bytes as 1, higher loss: dominated
    g[3, :, 0] = 3  # 8 bits everywhere: over the budget
    front = front_members(g, np.array([1.0, 0.5, 0.7, 0.1]), table, budget)
    assert sorted(map(bytes, (f.tobytes() for f in front))) == sorted([g[0].tobytes(), g[1].tobytes()])
    with pytest.raises(ValueError, match="no feasible genome with a finite loss"):
        front_members(g[3:], np.array([0.1]), table, budget)


def test_the_neighbourhood_is_feasible_distinct_new_and_near_the_centres(table) -> None:
    budget = parse_budget("4bits")
    rng = np.random.default_rng(0)
    centres = initial_population(rng, 3, table, budget, None)
    exclude = {c.tobytes() for c in centres}
    pool = neighbourhood(rng, centres, table, budget, 50, 2, exclude)
    assert 0 < len(pool) <= 50
    assert (violations(pool, budget, table) == 0).all()
    assert len({p.tobytes() for p in pool}) == len(pool) and not exclude & {p.tobytes() for p in pool}


def test_refinement_beats_random_picks_from_its_own_pool(table) -> None:
    """Over seeds, the plans EI picks are better on average than plans drawn from the same region."""
    budget = parse_budget("4.2bits")
    space = table.space
    picked, drawn = [], []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        start = initial_population(rng, 6, table, budget, None)
        history = [(g, synthetic_loss(g)) for g in start]
        new = refine(
            lambda plan: synthetic_loss(space.from_plan(plan)),
            table,
            budget,
            history,
            config=BayesConfig(iterations=4, pool=64),
            seed=seed,
        )
        assert len(new) == 4 and all(violations(g, budget, table) == 0 for g, _ in new)
        assert len({g.tobytes() for g, _ in new} | {g.tobytes() for g, _ in history}) == 10
        picked += [loss for _, loss in new]
        centres = front_members(
            np.stack([g for g, _ in history]), np.array([v for _, v in history]), table, budget
        )
        pool = neighbourhood(np.random.default_rng(100 + seed), centres, table, budget, 64, 3, set())
        drawn += [synthetic_loss(g) for g in pool]
    assert np.mean(picked) < np.mean(drawn)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"BayesConfig.pool must be an integer >= 1, got 0"):
        BayesConfig(pool=0)
    with pytest.raises(ValueError, match=r"BayesConfig.iterations must be an integer >= 0, got -1"):
        BayesConfig(iterations=-1)
    with pytest.raises(ValueError, match=r"BayesConfig.batch must be an integer >= 1, got 0"):
        BayesConfig(batch=0)


def test_a_batch_of_one_is_the_top_ei_and_a_larger_batch_spreads_out() -> None:
    x = np.array([[0.0], [0.2], [0.8], [1.0]])
    model = fit_gp(x, np.array([1.0, 0.8, 0.2, 0.1]))
    pool = np.linspace(0.0, 1.0, 21)[:, None]  # (21, 1)
    top = int(np.argmax(log_expected_improvement(model, pool, best=0.1)))
    assert choose_batch(model, pool, 0.1, 1) == [top]
    picks = choose_batch(model, pool, 0.1, 3)
    assert len(set(picks)) == 3 and picks[0] == top  # greedy: the first pick is the top EI
    assert pool[picks].min() > 0.5  # all three in the promising region, not near the bad x = 0


def test_batched_refinement_scores_each_round_as_one_batch(table) -> None:
    budget = parse_budget("4.2bits")
    space = table.space
    start = initial_population(np.random.default_rng(0), 6, table, budget, None)
    batches: list[int] = []

    class Objective:
        def many(self, plans):
            batches.append(len(plans))
            return [synthetic_loss(space.from_plan(p)) for p in plans]

    new = refine(
        Objective(),
        table,
        budget,
        [(g, synthetic_loss(g)) for g in start],
        config=BayesConfig(iterations=2, pool=64, batch=3),
    )
    assert batches == [3, 3] and len({g.tobytes() for g, _ in new}) == 6
