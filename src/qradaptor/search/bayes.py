"""Bayesian refinement around the Pareto front (§3.5): a Matérn-5/2 Gaussian process and Expected Improvement.

After NSGA-II, QR-Adaptor fits a Gaussian process to every proxy score seen so far and
spends the last evaluations where Expected Improvement is highest, in the region around
the Pareto front. The genome space is discrete and the budget is a hard constraint, so the
acquisition is maximised over a pool of feasible neighbours of the front rather than by
gradient ascent: each candidate starts from a front member (crossed with another one half
of the time), takes a few proximity steps and is repaired to the budget.

Notation:
    U          search units (blocks, or modules); genome (U, 2) of choice indices
    x          encode(genome): (d,) in [0, 1], index / (choices - 1) for every gene with
               more than one choice (a fixed gene carries no information and is dropped)
    y          proxy loss (minimised); diverged (inf) scores are left out of the fit
    GP         BoTorch SingleTaskGP, Matérn-5/2 kernel with one lengthscale per dimension
               under BoTorch's dimension-scaled log-normal prior, outcomes standardised
    EI(x)      E[max(y* - f(x), 0)] for the best loss y*; scored as log EI (LogEI of
               Ament et al. 2023), which ranks the same but does not underflow

The GP is fitted in float64 on the CPU: a few dozen points, where determinism matters more
than speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from qradaptor.plan import Plan
from qradaptor.search.budget import Budget, repair, violations
from qradaptor.search.evolve import score_plans
from qradaptor.search.nsga2 import layerwise_crossover, rank_and_crowding
from qradaptor.search.space import Genome, MemoryTable, SearchSpace


@dataclass(frozen=True)
class BayesConfig:
    """How the refinement stage spends its evaluations."""

    iterations: int = 5
    """GP fits of the refinement; each chooses ``batch`` plans to evaluate."""
    batch: int = 1
    """Plans chosen per GP fit, scored together (in parallel by workers). One takes the pool
    member of highest EI; more take BoTorch's greedy sequential q-LogEI choice, where each
    pick is scored jointly with the ones before it (Monte-Carlo, fixed seed)."""
    pool: int = 256
    """Candidate plans scored by Expected Improvement per iteration."""
    max_steps: int = 3
    """A candidate takes 1..max_steps proximity steps from its front member."""

    def __post_init__(self) -> None:
        for name, minimum in (("iterations", 0), ("batch", 1), ("pool", 1), ("max_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"BayesConfig.{name} must be an integer >= {minimum}, got {value!r}")


def encode(genomes: npt.ArrayLike, space: SearchSpace) -> npt.NDArray[np.float64]:
    """(n, U, 2) genomes -> (n, d) points in [0, 1]^d (see module notation)."""
    g = space.check_genome(genomes)
    g = g[None] if g.ndim == 2 else g
    sizes = np.array([len(space.bit_choices), len(space.rank_choices)])
    scaled = g / np.maximum(sizes - 1, 1)  # (n, U, 2)
    keep = sizes > 1
    return scaled[:, :, keep].reshape(g.shape[0], -1).astype(np.float64)


def fit_gp(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> Any:
    """A Matérn-5/2 SingleTaskGP fitted by maximum marginal likelihood to (n, d) x and (n,) y."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.mlls import ExactMarginalLogLikelihood

    train_x = torch.as_tensor(x, dtype=torch.float64)
    train_y = torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)  # (n, 1)
    kernel = get_covar_module_with_dim_scaled_prior(ard_num_dims=train_x.shape[-1], use_rbf_kernel=False)
    assert getattr(kernel, "nu", None) == 2.5, "the paper's kernel is Matérn-5/2"
    model = SingleTaskGP(train_x, train_y, covar_module=kernel, outcome_transform=Standardize(m=1))
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the fit's restarts draw from torch's generator
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def log_expected_improvement(model: Any, x: npt.NDArray[np.float64], best: float) -> npt.NDArray[np.float64]:
    """log EI of each row of (m, d) ``x`` for minimising, below the best loss ``best``."""
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement

    acquisition = LogExpectedImprovement(model, best_f=best, maximize=False)
    with torch.no_grad():
        values = acquisition(torch.as_tensor(x, dtype=torch.float64).unsqueeze(1))  # (m, 1, d) -> (m,)
    return values.numpy().astype(np.float64)


def choose_batch(model: Any, x: npt.NDArray[np.float64], best: float, batch: int) -> list[int]:
    """Row indices of (m, d) ``x`` to evaluate next: the top log EI, or a q-LogEI batch.

    For ``batch`` > 1, BoTorch's ``optimize_acqf_discrete`` picks greedily: each pick
    maximises the joint q-LogEI of itself and the picks before it, so a batch spreads out
    instead of taking ``batch`` near-copies of the best point.
    """
    if batch == 1 or len(x) <= 1:
        return [int(np.argmax(log_expected_improvement(model, x, best)))]
    import torch
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.acquisition.objective import LinearMCObjective
    from botorch.optim import optimize_acqf_discrete
    from botorch.sampling import SobolQMCNormalSampler

    q = min(batch, len(x))
    choices = torch.as_tensor(x, dtype=torch.float64)
    acquisition = qLogExpectedImprovement(
        model,
        best_f=-best,  # minimising the loss: maximise its negation
        sampler=SobolQMCNormalSampler(sample_shape=torch.Size([256]), seed=0),
        objective=LinearMCObjective(weights=torch.tensor([-1.0], dtype=torch.float64)),
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        picked, _ = optimize_acqf_discrete(acquisition, q=q, choices=choices, unique=True)
    distances = torch.cdist(picked, choices)  # (q, m)
    return [int(i) for i in distances.argmin(dim=1)]


def front_members(
    genomes: Genome, losses: npt.NDArray[np.float64], table: MemoryTable, budget: Budget
) -> Genome:
    """The non-dominated (loss, bytes) genomes among the feasible ones with a finite loss."""
    feasible = (violations(genomes, budget, table) == 0) & np.isfinite(losses)
    if not feasible.any():
        raise ValueError("no feasible genome with a finite loss to refine around")
    g, loss = genomes[feasible], losses[feasible]
    objectives = np.stack([loss, table.bytes_of(g).astype(np.float64)], axis=1)
    ranks, _ = rank_and_crowding(objectives, np.zeros(len(g)))
    return g[ranks == 0]


def neighbourhood(
    rng: np.random.Generator,
    centres: Genome,
    table: MemoryTable,
    budget: Budget,
    size: int,
    max_steps: int,
    exclude: set[bytes],
    sensitivity: npt.NDArray[np.float64] | None = None,
) -> Genome:
    """Up to ``size`` distinct feasible genomes near ``centres`` (k, U, 2), none in ``exclude``.

    Each draw: a random centre, layer-wise crossover with another centre half of the time,
    then 1..max_steps proximity steps (one gene moves to an adjacent choice), then repair.
    """
    space = table.space
    limits = np.array([len(space.bit_choices), len(space.rank_choices)])
    movable = np.flatnonzero(limits > 1)  # genes with a choice to make
    units = centres.shape[1]
    out: dict[bytes, Genome] = {}
    for _ in range(size * 4):
        if len(out) >= size:
            break
        child = centres[rng.integers(len(centres))].copy()
        if len(centres) > 1 and rng.random() < 0.5:
            child = layerwise_crossover(rng, child, centres[rng.integers(len(centres))])
        for _ in range(int(rng.integers(1, max_steps + 1))):
            unit, gene = int(rng.integers(units)), int(rng.choice(movable))
            step = int(rng.choice((-1, 1)))
            child[unit, gene] = np.clip(child[unit, gene] + step, 0, limits[gene] - 1)
        child = repair(rng, child, budget, table, sensitivity)
        key = child.tobytes()
        if key not in exclude and key not in out:
            out[key] = child
    return np.array(list(out.values()), dtype=np.int64).reshape(-1, *centres.shape[1:])


def refine(
    objective: Callable[[Plan], float],
    table: MemoryTable,
    budget: Budget,
    history: Sequence[tuple[Genome, float]],
    *,
    config: BayesConfig | None = None,
    seed: int = 0,
    sensitivity: npt.ArrayLike | None = None,
    plan_kwargs: Mapping[str, Any] | None = None,
    on_iteration: Callable[[int], None] | None = None,
    encoder: Callable[[Genome], npt.NDArray[np.float64]] | None = None,
    plan_of: Callable[[Genome], Plan] | None = None,
) -> list[tuple[Genome, float]]:
    """Evaluates ``config.iterations`` plans chosen by Expected Improvement near the front (§3.5).

    Every iteration refits the GP to all finite scores so far (``history`` plus the new
    ones), recomputes the front of the feasible ones, draws a neighbourhood pool and
    evaluates the pool member of highest EI (``config.batch`` members, see
    ``choose_batch``). With fewer than two finite scores there is
    nothing to fit, and the first pool member is taken. Stops early when the neighbourhood
    holds no unevaluated plan.

    Args:
        objective: scores a Plan (lower is better).
        table: prices genomes; ``table.space`` gives the choices.
        budget: every proposal meets it.
        history: (genome, loss) of every evaluation so far; at least one feasible and finite.
        config: iterations, pool size and step count.
        seed: seeds the neighbourhood draws.
        sensitivity: per-unit sensitivity for the repair order, or None.
        plan_kwargs: passed to every Plan (group_size, alpha, ...).
        on_iteration: called with the 1-based iteration number before its evaluations.
        encoder: (n, U, 2) genomes -> (n, d) GP inputs; default ``encode`` (every gene), at
            module granularity ``type_features.type_encoder`` (the KL per module type).
        plan_of: the Plan of one genome; default ``table.space.to_plan(genome, **plan_kwargs)``
            (an item table of ``ties`` expands its genomes to units first).

    Returns:
        The new (genome, loss) pairs, in evaluation order.

    Raises:
        ValueError: if ``history`` has no feasible genome with a finite loss.
    """
    config = BayesConfig() if config is None else config
    space = table.space
    rng = np.random.default_rng(seed)
    encoder = encoder or partial(encode, space=space)
    plan_of = plan_of or partial(space.to_plan, **dict(plan_kwargs or {}))
    sens = None if sensitivity is None else np.asarray(sensitivity, dtype=np.float64)
    genomes = [space.check_genome(g) for g, _ in history]
    losses = [float(v) for _, v in history]
    new: list[tuple[Genome, float]] = []
    for iteration in range(1, config.iterations + 1):
        stacked = np.stack(genomes)  # (n, U, 2)
        values = np.array(losses)
        centres = front_members(stacked, values, table, budget)
        pool = neighbourhood(
            rng, centres, table, budget, config.pool, config.max_steps, {g.tobytes() for g in genomes}, sens
        )
        if len(pool) == 0:
            break
        finite = np.isfinite(values)
        if finite.sum() >= 2:
            model = fit_gp(encoder(stacked[finite]), values[finite])
            best = float(values[finite & (violations(stacked, budget, table) == 0)].min())
            chosen = choose_batch(model, encoder(pool), best, config.batch)
        else:
            chosen = list(range(min(config.batch, len(pool))))
        if on_iteration is not None:
            on_iteration(iteration)
        picked = [pool[i] for i in chosen]
        scores = score_plans(objective, [plan_of(g) for g in picked])
        for genome, loss in zip(picked, scores, strict=True):
            loss = loss if math.isfinite(loss) else math.inf
            genomes.append(genome)
            losses.append(loss)
            new.append((genome, loss))
    return new
