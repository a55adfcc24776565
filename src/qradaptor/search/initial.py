"""The sensitivity-biased initial population of the search (QR-Adaptor §3.3).

Notation:
    L        units (blocks, or modules; see ``space``);  K_b, K_r  numbers of bit-width and rank choices
    s_l      sensitivity of unit l (e.g. its block's KL divergence at the lowest bit-width, Eq. 6,
             through ``space.unit_sensitivity``), min-max normalised over units to [0, 1]
    x        a genome: (L, 2) choice indices [bits index, rank index] per unit

Each unit's choice index is drawn around a target that grows with its sensitivity:
    index_l ~ round( s_l * (K - 1) + spread * N(0, 1) ),  clipped to [0, K - 1]
so the probability of a higher (bits, rank) grows with s_l (§3.3), and ``spread`` keeps the
population diverse. Every individual is then repaired to the budget, least sensitive units
first, and filled up to it, most sensitive units first (``budget.fill``): normalised
sensitivities are mostly small, so the raw draws sit far below a typical budget, and on
SmolLM2 an unfilled population of 2-bit-heavy plans (3.0-3.3 of 4.0 avg bits) scored
7-8 nats where filled ones could use the budget (docs/SEARCH.md). Without a sensitivity
profile (the "no profiling" ablation) choices and fill order are uniform at random.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qradaptor.search.budget import Budget, fill, repair
from qradaptor.search.space import MemoryTable


def normalise(sensitivity: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Min-max normalisation to [0, 1]; all-equal sensitivities give 0.5 everywhere."""
    s = np.asarray(sensitivity, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ValueError(f"sensitivity must be a 1-D array of finite numbers, got shape {s.shape}")
    span = s.max() - s.min()
    return np.full_like(s, 0.5) if span == 0 else (s - s.min()) / span


def initial_population(
    rng: np.random.Generator,
    size: int,
    table: MemoryTable,
    budget: Budget,
    sensitivity: npt.ArrayLike | None = None,
    *,
    spread: float = 1.0,
) -> npt.NDArray[np.int64]:
    """``size`` feasible genomes, biased toward precision where units are sensitive.

    Args:
        rng: the search's random generator.
        size: population size (>= 1).
        table: prices genomes; its ``space`` gives the choices.
        budget: every individual is repaired to meet it.
        sensitivity: (L,) per-unit sensitivity (``unit_sensitivity`` of a block profile), or
            None for uniform random choices.
        spread: standard deviation of the noise around each unit's target, in choice steps.

    Returns:
        (size, L, 2) int64 choice indices.

    Raises:
        ValueError: on a bad size, spread or sensitivity shape, or a budget no genome meets.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    space = table.space
    n_units = space.num_units
    sizes = np.array([len(space.bit_choices), len(space.rank_choices)])  # (2,)
    if sensitivity is None:
        raw = rng.integers(0, sizes, size=(size, n_units, 2))
        s = None
    else:
        s = normalise(sensitivity)
        if s.shape != (n_units,):
            raise ValueError(
                f"sensitivity must have one value per {space.granularity} ({n_units}), got {s.shape[0]}"
            )
        target = s[None, :, None] * (sizes - 1)  # (1, L, 2)
        noise = spread * rng.standard_normal((size, n_units, 2))
        raw = np.clip(np.rint(target + noise), 0, sizes - 1).astype(np.int64)
    repaired = [repair(rng, genome, budget, table, s) for genome in raw]
    return np.stack([fill(rng, genome, budget, table, s) for genome in repaired])
