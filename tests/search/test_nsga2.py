"""NSGA-II kernels against hand-computed fronts, distances and operator invariants."""

from __future__ import annotations

import numpy as np
import pytest

from qradaptor.search.nsga2 import (
    binary_tournament,
    constrained_ranks,
    crowding_distance,
    dominance_matrix,
    layerwise_crossover,
    non_dominated_ranks,
    proximity_mutation,
    rank_and_crowding,
    select_survivors,
)

# (1,5), (2,3), (3,1) are mutually non-dominated; (2,3) dominates (2,4); (2,4) dominates
# (4,4); (4,4) dominates (5,5).
POINTS = np.array([[1, 5], [2, 3], [3, 1], [2, 4], [4, 4], [5, 5]], dtype=float)


def test_non_dominated_ranks_by_hand() -> None:
    assert non_dominated_ranks(POINTS).tolist() == [0, 0, 0, 1, 2, 3]


def test_non_dominated_ranks_duplicates_share_a_front() -> None:
    # equal points do not dominate each other
    assert non_dominated_ranks([[1, 1], [1, 1], [2, 2]]).tolist() == [0, 0, 1]


def test_dominance_matrix_is_strict() -> None:
    d = dominance_matrix(POINTS)
    assert d[1, 3] and not d[3, 1]
    assert not d.diagonal().any()
    assert not d[0, 1] and not d[1, 0]


def test_ranks_reject_bad_shape() -> None:
    with pytest.raises(ValueError, match="objectives must be a 2-d"):
        non_dominated_ranks([1.0, 2.0])


def test_crowding_distance_by_hand() -> None:
    front = np.array([[0, 10], [1, 6], [3, 2], [6, 0]], dtype=float)
    # objective 0 (range 6): point 1 gets (3-0)/6, point 2 gets (6-1)/6
    # objective 1 (range 10): point 1 gets (10-2)/10, point 2 gets (6-0)/10
    d = crowding_distance(front)
    assert np.isinf(d[0]) and np.isinf(d[3])
    assert d[1] == pytest.approx(0.5 + 0.8)
    assert d[2] == pytest.approx(5 / 6 + 0.6)


def test_crowding_distance_small_and_flat_fronts() -> None:
    assert np.isinf(crowding_distance([[1, 2], [2, 1]])).all()
    d = crowding_distance([[0, 1], [1, 1], [2, 1]])  # second objective has zero range
    assert np.isinf(d[0]) and np.isinf(d[2]) and d[1] == pytest.approx(1.0)


def test_constrained_ranks_feasible_before_infeasible() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        objectives = rng.random((12, 2))
        violation = np.where(rng.random(12) < 0.5, 0.0, rng.random(12))
        ranks = constrained_ranks(objectives, violation)
        feasible = violation == 0
        if feasible.any() and (~feasible).any():
            assert ranks[feasible].max() < ranks[~feasible].min()


def test_constrained_ranks_by_hand() -> None:
    # infeasible points are ordered by violation only, even when they dominate feasible ones
    objectives = [[5, 5], [1, 1], [0, 0], [6, 6], [0, 9]]
    violation = [0.0, 0.3, 0.1, 0.0, 0.3]
    assert constrained_ranks(objectives, violation).tolist() == [0, 3, 2, 1, 3]


def test_constrained_ranks_all_infeasible_starts_at_zero() -> None:
    assert constrained_ranks([[1, 1], [2, 2]], [0.5, 0.2]).tolist() == [1, 0]


def test_constrained_ranks_rejects_negative_violation() -> None:
    with pytest.raises(ValueError, match="violation must be >= 0"):
        constrained_ranks([[1, 1]], [-0.1])


def test_select_survivors_rank_then_crowding_then_index() -> None:
    # front 0: indices 0, 1, 2 (1 is interior, least crowded); 3 rank 1; 4 infeasible
    objectives = np.array([[0, 4], [2, 2], [4, 0], [3, 3], [0, 0]], dtype=float)
    violation = np.array([0, 0, 0, 0, 1.0])
    assert select_survivors(objectives, violation, 2).tolist() == [0, 2]
    assert select_survivors(objectives, violation, 5).tolist() == [0, 2, 1, 3, 4]
    with pytest.raises(ValueError, match="k must be an integer in 0..5"):
        select_survivors(objectives, violation, 6)


def test_binary_tournament_prefers_rank_then_crowding() -> None:
    rng = np.random.default_rng(1)
    ranks, crowding = rank_and_crowding(POINTS, np.zeros(6))
    winners = binary_tournament(rng, ranks, crowding, 2000)
    assert winners.shape == (2000,)
    # the worst individual (rank 3) can never win: every opponent beats it
    assert 5 not in set(winners.tolist())
    # with two individuals, the better one always wins
    assert set(binary_tournament(rng, [1, 0], [0.0, 0.0], 50).tolist()) == {1}
    assert set(binary_tournament(rng, [0, 0], [0.1, 0.5], 50).tolist()) == {1}


def test_layerwise_crossover_keeps_rows_whole() -> None:
    a = np.array([[0, 0], [1, 1], [2, 2], [3, 0], [0, 2], [1, 0]])
    b = np.array([[3, 2], [2, 0], [0, 1], [1, 2], [2, 1], [3, 1]])
    seen_a = seen_b = False
    for seed in range(200):
        child = layerwise_crossover(np.random.default_rng(seed), a, b)
        from_a = (child == a).all(axis=1)
        from_b = (child == b).all(axis=1)
        assert (from_a | from_b).all()
        seen_a |= bool(from_a.any())
        seen_b |= bool(from_b.any())
    assert seen_a and seen_b
    assert (layerwise_crossover(np.random.default_rng(0), a, b, p=1.0) == a).all()
    assert (layerwise_crossover(np.random.default_rng(0), a, b, p=0.0) == b).all()


def test_layerwise_crossover_rejects_mismatched_parents() -> None:
    with pytest.raises(ValueError, match="same shape"):
        layerwise_crossover(np.random.default_rng(0), np.zeros((3, 2), int), np.zeros((4, 2), int))


def test_proximity_mutation_moves_at_most_one_step_in_range() -> None:
    sizes = np.array([4, 3])
    moved = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        genome = np.stack([rng.integers(0, 4, 8), rng.integers(0, 3, 8)], axis=1)
        child = proximity_mutation(rng, genome, 4, 3, rate=0.5)
        assert (np.abs(child - genome) <= 1).all()
        assert (child >= 0).all() and (child < sizes).all()
        moved += int((child != genome).sum())
    assert moved > 0


def test_proximity_mutation_rate_one_always_moves_and_fixed_gene_never() -> None:
    genome = np.array([[0, 0], [3, 0], [1, 0]])
    child = proximity_mutation(np.random.default_rng(0), genome, 4, 1, rate=1.0)
    assert child[:, 0].tolist()[:2] == [1, 2]  # ends have one neighbour
    assert abs(child[2, 0] - 1) == 1
    assert (child[:, 1] == 0).all()  # a single rank choice cannot move
    assert (proximity_mutation(np.random.default_rng(0), genome, 4, 1, rate=0.0) == genome).all()


def test_proximity_mutation_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="genome indices must lie"):
        proximity_mutation(np.random.default_rng(0), np.array([[4, 0]]), 4, 3, rate=0.1)
    with pytest.raises(ValueError, match="rate must be a probability"):
        proximity_mutation(np.random.default_rng(0), np.array([[0, 0]]), 4, 3, rate=1.5)
