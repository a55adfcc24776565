"""NSGA-II kernels: Pareto ranks, crowding, constrained selection and the genetic operators.

Pure functions of numpy arrays, no model and no Plan: the search loop wires them to the
objective (§3.4 of QR-Adaptor, after Deb et al. 2002, "A fast and elitist multiobjective
genetic algorithm: NSGA-II").

Notation:
    n        individuals in a population
    m        objectives, all minimised (QR-Adaptor: proxy loss and memory)
    F        (n, m) objective values; F[i] dominates F[j] iff F[i] <= F[j] everywhere and
             F[i] < F[j] somewhere
    v        (n,) constraint violation, 0 for a feasible individual (within the budget)
    L        layers (transformer blocks) of a genome
    genome   (L, 2) integer choice indices: row l is [bits index, rank index] of block l, so
             the layer's (bits, rank) tuple is one gene and "adjacent" means +-1
    rank     0 for the first non-dominated front, 1 for the next, ...
    crowding distance of an individual to its front neighbours; inf at a front's ends
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _check_objectives(objectives: npt.ArrayLike) -> FloatArray:
    values = np.asarray(objectives, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"objectives must be a 2-d (n, m) array, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("objectives must not contain NaN, got at least one NaN value")
    return values


def _check_violation(violation: npt.ArrayLike, n: int) -> FloatArray:
    values = np.asarray(violation, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"violation must have shape ({n},) to match objectives, got {values.shape}")
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError(f"violation must be >= 0 everywhere, got min {np.nanmin(values)!r} or NaN")
    return values


def dominance_matrix(objectives: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """D[i, j] is True iff individual i Pareto-dominates individual j (all objectives minimised).

    Args:
        objectives: (n, m) objective values.

    Returns:
        (n, n) boolean matrix.
    """
    f = _check_objectives(objectives)
    le = (f[:, None, :] <= f[None, :, :]).all(axis=2)  # (n, n)
    lt = (f[:, None, :] < f[None, :, :]).any(axis=2)  # (n, n)
    return le & lt


def non_dominated_ranks(objectives: npt.ArrayLike) -> IntArray:
    """Fast non-dominated sorting (Deb et al. 2002, §III-A): the front index of each individual.

    Args:
        objectives: (n, m) objective values, all minimised.

    Returns:
        (n,) int ranks; 0 is the Pareto front, rank k is non-dominated once fronts < k are removed.
    """
    dominates = dominance_matrix(objectives)
    n = dominates.shape[0]
    ranks = np.full(n, -1, dtype=np.int64)
    dominated_by = dominates.sum(axis=0)  # (n,) how many individuals dominate j
    front = np.flatnonzero(dominated_by == 0)
    rank = 0
    while front.size:
        ranks[front] = rank
        dominated_by = dominated_by - dominates[front].sum(axis=0)
        dominated_by[ranks >= 0] = -1  # already ranked: never again
        front = np.flatnonzero(dominated_by == 0)
        rank += 1
    assert (ranks >= 0).all()
    return ranks


def crowding_distance(objectives: npt.ArrayLike) -> FloatArray:
    """Crowding distance within one front (Deb et al. 2002, §III-B).

    For each objective the front is sorted (stable, so ties keep index order); the two end
    points get inf and every other point adds ``(f[next] - f[prev]) / (f_max - f_min)``.
    An objective with zero range adds nothing to interior points.

    Args:
        objectives: (k, m) objective values of the members of one front.

    Returns:
        (k,) distances; inf at the boundary points of any objective.
    """
    f = _check_objectives(objectives)
    k, m = f.shape
    distance = np.zeros(k, dtype=np.float64)
    if k <= 2:
        return np.full(k, np.inf)
    for j in range(m):
        order = np.argsort(f[:, j], kind="stable")
        column = f[order, j]
        distance[order[0]] = distance[order[-1]] = np.inf
        span = column[-1] - column[0]
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def constrained_ranks(objectives: npt.ArrayLike, violation: npt.ArrayLike) -> IntArray:
    """Ranks under Deb's constrained domination (Deb et al. 2002, §V): the budget as a constraint.

    Feasible individuals (violation == 0) are sorted into Pareto fronts among themselves
    and come first; every infeasible individual ranks after all of them, ordered by
    violation alone (equal violations share a rank).

    Args:
        objectives: (n, m) objective values, all minimised.
        violation: (n,) constraint violation, >= 0.

    Returns:
        (n,) int ranks starting at 0.
    """
    f = _check_objectives(objectives)
    v = _check_violation(violation, f.shape[0])
    ranks = np.zeros(f.shape[0], dtype=np.int64)
    feasible = v == 0
    start = 0
    if feasible.any():
        ranks[feasible] = non_dominated_ranks(f[feasible])
        start = int(ranks[feasible].max()) + 1
    if (~feasible).any():
        levels, inverse = np.unique(v[~feasible], return_inverse=True)
        assert levels.size >= 1
        ranks[~feasible] = start + inverse.reshape(-1)
    return ranks


def rank_and_crowding(objectives: npt.ArrayLike, violation: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    """Constrained ranks and the crowding distance of each individual within its rank.

    Args:
        objectives: (n, m) objective values, all minimised.
        violation: (n,) constraint violation, >= 0.

    Returns:
        ``(ranks, crowding)``, both (n,).
    """
    f = _check_objectives(objectives)
    ranks = constrained_ranks(f, violation)
    crowding = np.zeros(f.shape[0], dtype=np.float64)
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowding[members] = crowding_distance(f[members])
    return ranks, crowding


def select_survivors(objectives: npt.ArrayLike, violation: npt.ArrayLike, k: int) -> IntArray:
    """Elitist environmental selection of NSGA-II: the best ``k`` of a merged population.

    Individuals are ordered by constrained rank, then by larger crowding distance, then by
    smaller index (so the result is deterministic), and the first ``k`` are kept.

    Args:
        objectives: (n, m) objective values, all minimised.
        violation: (n,) constraint violation, >= 0.
        k: survivors to keep, 0..n.

    Returns:
        (k,) indices into the population, best first.

    Raises:
        ValueError: if ``k`` is not in 0..n.
    """
    f = _check_objectives(objectives)
    n = f.shape[0]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in 0..{n} (the population size), got {k!r}")
    ranks, crowding = rank_and_crowding(f, violation)
    order = np.lexsort((np.arange(n), -crowding, ranks))  # last key sorts first
    return order[:k].astype(np.int64)


def binary_tournament(
    rng: np.random.Generator, ranks: npt.ArrayLike, crowding: npt.ArrayLike, n: int
) -> IntArray:
    """Crowded binary tournament selection of ``n`` parents (Deb et al. 2002, §III-C).

    Two distinct individuals are drawn at random; the lower rank wins, then the larger
    crowding distance, then the smaller index.

    Args:
        rng: source of randomness.
        ranks: (p,) constrained ranks of the population.
        crowding: (p,) crowding distances.
        n: parents to draw.

    Returns:
        (n,) indices of the winners.

    Raises:
        ValueError: if the population is empty, the arrays disagree in length or ``n < 0``.
    """
    r = np.asarray(ranks, dtype=np.int64)
    c = np.asarray(crowding, dtype=np.float64)
    if r.ndim != 1 or r.shape != c.shape or r.size == 0:
        raise ValueError(
            f"ranks and crowding must be non-empty 1-d arrays of one length, got {r.shape} and {c.shape}"
        )
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    p = r.size
    if p == 1:
        return np.zeros(n, dtype=np.int64)
    a = rng.integers(0, p, size=n)
    b = (a + rng.integers(1, p, size=n)) % p  # distinct from a
    a_wins = (r[a] < r[b]) | ((r[a] == r[b]) & ((c[a] > c[b]) | ((c[a] == c[b]) & (a < b))))
    return np.where(a_wins, a, b).astype(np.int64)


def _check_genome(genome: npt.ArrayLike, name: str) -> IntArray:
    g = np.asarray(genome)
    if g.ndim != 2 or g.shape[1] != 2 or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(
            f"{name} must be an (L, 2) integer array of [bits index, rank index] rows, "
            f"got shape {g.shape} and dtype {g.dtype}"
        )
    return g.astype(np.int64)


def layerwise_crossover(
    rng: np.random.Generator, parent_a: npt.ArrayLike, parent_b: npt.ArrayLike, p: float = 0.5
) -> IntArray:
    """Layer-wise uniform crossover (§3.4): each layer's (bits, rank) row comes whole from one parent.

    Args:
        rng: source of randomness.
        parent_a: (L, 2) genome.
        parent_b: (L, 2) genome of the same shape.
        p: probability that a layer is inherited from ``parent_a``.

    Returns:
        (L, 2) child genome.

    Raises:
        ValueError: if the parents are not (L, 2) integer arrays of one shape, or ``p`` is not in [0, 1].
    """
    a = _check_genome(parent_a, "parent_a")
    b = _check_genome(parent_b, "parent_b")
    if a.shape != b.shape:
        raise ValueError(f"parent_a and parent_b must have the same shape, got {a.shape} and {b.shape}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    from_a = rng.random(a.shape[0]) < p  # (L,)
    return np.where(from_a[:, None], a, b)


def proximity_mutation(
    rng: np.random.Generator,
    genome: npt.ArrayLike,
    n_bits_choices: int,
    n_rank_choices: int,
    rate: float,
) -> IntArray:
    """Proximity mutation (§3.4): a gene moves only to an adjacent bit-width or rank.

    Each of the 2L genes mutates independently with probability ``rate``; a mutating gene
    steps to a neighbouring choice index (+1 or -1 at random, or the only neighbour at an
    end of the list, or not at all when there is a single choice). So no gene ever moves by
    more than one step and every index stays in range.

    Args:
        rng: source of randomness.
        genome: (L, 2) genome of choice indices.
        n_bits_choices: length of the ordered bit-width list (1 when bits are fixed).
        n_rank_choices: length of the ordered rank list (1 when the rank is fixed).
        rate: per-gene mutation probability in [0, 1].

    Returns:
        (L, 2) mutated copy.

    Raises:
        ValueError: on a malformed genome, choice counts < 1, indices out of range or a bad rate.
    """
    g = _check_genome(genome, "genome")
    sizes = np.array([n_bits_choices, n_rank_choices], dtype=np.int64)
    if (sizes < 1).any():
        raise ValueError(
            f"n_bits_choices and n_rank_choices must be >= 1, got {n_bits_choices} and {n_rank_choices}"
        )
    if (g < 0).any() or (g >= sizes).any():
        raise ValueError(f"genome indices must lie in [0, {sizes.tolist()}) per column, got {g.tolist()}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a probability in [0, 1], got {rate!r}")
    mutate = rng.random(g.shape) < rate  # (L, 2)
    step = np.where(rng.random(g.shape) < 0.5, -1, 1)
    step = np.where(g == 0, 1, step)  # at the low end only +1 exists
    step = np.where(g == sizes - 1, -1, step)  # at the high end only -1
    step = np.where(sizes == 1, 0, step)  # a single choice cannot move
    return g + np.where(mutate, step, 0)
