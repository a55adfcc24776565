"""Where the Gaussian process sees a module plan: the table's KL per module type.

At block granularity the refinement's GP takes a genome's choice indices as they are
(``bayes.encode``: 2 x 30 dimensions for SmolLM2). Per module that is 2 x 210, and the GP
has a handful of top-rung scores to fit: one ARD lengthscale per dimension cannot be learnt
from them, and its Expected Improvement is then noise. So at module granularity the GP sees
d = T (or 2T) coordinates, T the module types of a block (q, k, v, o, gate, up, down; the
tied groups of ``ties`` count as one type):

    x_t        the table's summed KL of the type-t units of genome g, sum_{u of type t}
               S_u(b_u), on a log scale mapped to [0, 1] between the type's least (all at
               their highest bits) and largest (all at their lowest) sum
    x_{T+t}    the mean rank index of the type-t units / (ranks - 1), with more than one rank

Why these: the knapsack already spends the budget where the summed KL is least; what the
table cannot know is how much a type's KL costs in measured loss (its additivity is measured
only within a block, where a block's module KLs sum to 0.8-1.3x its own KL at 3-8 bits,
docs/ALLOCATION.md; not across blocks, nor against the fine-tuned loss). A GP over the
per-type KL learns that correction from the scores, in as many dimensions as a block has
linears, and every scored plan (knapsack, sweep, neighbour, Bayes pick) has coordinates.
What it gives up: two plans that put the same per-type KL in different blocks look alike to
it (the GP's noise absorbs that), and the pool it ranks is still drawn in genome space near
the front (``bayes``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from qradaptor.search.space import Genome, SearchSpace


def type_encoder(
    space: SearchSpace, values: npt.ArrayLike
) -> Callable[[npt.ArrayLike], npt.NDArray[np.float64]]:
    """The map of (n, U, 2) genomes of a module ``space`` to (n, d) points in [0, 1]^d (module notation).

    Args:
        space: a module space (its ``modules`` are the types; an item space of ``ties`` too).
        values: (U, len(bit_choices)) per-unit KL of each bit choice (``knapsack.unit_values``).

    Raises:
        ValueError: for a block space, or values of another shape.
    """
    if not space.modules:
        raise ValueError("type_encoder needs a module search space; a block genome is encoded as it is")
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (space.num_units, len(space.bit_choices)):
        wanted = (space.num_units, len(space.bit_choices))
        raise ValueError(f"values must have shape {wanted}, got {v.shape}")
    types = np.arange(space.num_units) % len(space.modules)  # (U,) block-major units
    one_hot = np.eye(len(space.modules))[types]  # (U, T)
    least, largest = v.min(axis=1) @ one_hot, v.max(axis=1) @ one_hot  # (T,)
    floor = 1e-3 * max(float(largest.max()), 1e-12)  # keeps log finite for types at zero KL
    low, high = np.log(least + floor), np.log(largest + floor)
    kl_moves = high > low  # a type whose KL no choice changes carries no information
    ranks = len(space.rank_choices)
    units = np.arange(space.num_units)

    def encode(genomes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        g: Genome = space.check_genome(genomes)
        g = g[None] if g.ndim == 2 else g
        kl = v[units, g[..., 0]] @ one_hot  # (n, T)
        x = (np.log(kl[:, kl_moves] + floor) - low[kl_moves]) / (high - low)[kl_moves]
        if ranks > 1:
            x = np.concatenate([x, (g[..., 1] @ one_hot) / one_hot.sum(axis=0) / (ranks - 1)], axis=1)
        return np.clip(x, 0.0, 1.0)

    return encode
