"""The memory budget of a search: parsing it, measuring a genome against it, and meeting it.

A budget is either an average of stored bits per block-linear weight (the paper's Avg. Bit,
group scales and zeros included: uniform 4-bit at group 64 is 4.5) or total model bytes.
``violations`` turns it into the constraint NSGA-II ranks by; ``repair`` steps a genome down
until it fits (least sensitive units first) and ``fill`` steps it back up while it still
fits (most sensitive first), both priced by a ``MemoryTable``.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from qradaptor.plan import UNQUANTIZED
from qradaptor.search.space import Genome, MemoryTable, smallest_and_largest

BudgetKind = Literal["avg_bits", "bytes"]


@dataclass(frozen=True)
class Budget:
    """A memory budget: average bits per weight, or total model bytes."""

    kind: BudgetKind
    """"avg_bits" (the paper's Avg. Bit, metadata included) or "bytes" (``total_bytes``)."""
    value: float
    """The limit, > 0."""

    def __post_init__(self) -> None:
        if self.kind not in ("avg_bits", "bytes"):
            raise ValueError(f"Budget.kind must be 'avg_bits' or 'bytes', got {self.kind!r}")
        number = isinstance(self.value, numbers.Real) and not isinstance(self.value, bool)
        if not number or not np.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"Budget.value must be a finite number > 0, got {self.value!r}")

    def describe(self) -> str:
        """e.g. "3.5 avg bits" or "800000000 bytes (762.9 MiB)"."""
        if self.kind == "avg_bits":
            return f"{self.value:g} avg bits"
        return f"{self.value:.0f} bytes ({self.value / 2**20:.1f} MiB)"


_UNITS: Mapping[str, float] = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_BUDGET_RE = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([a-z]+)$")
"""A number and its unit with nothing between: "4.0 bits" and "4bit" are refused, not guessed."""


def parse_budget(text: str) -> Budget:
    """Parses "3.5bits", "1.2GB", "800MB", "1.5GiB" (case-insensitive; GB = 1e9, GiB = 2**30).

    Strict on purpose: a budget decides what a long search may spend, so "4bit" (a uniform
    4-bit plan stores 4.5 bits with its scales) or "4.0 bits" is refused with the accepted forms
    rather than read as something the user may not have meant.

    Raises:
        ValueError: naming the text and the accepted forms.
    """
    accepted = "a number followed by 'bits' (e.g. '3.5bits') or by B, KB, MB, GB, KiB, MiB, GiB"
    if not isinstance(text, str):
        raise ValueError(f"budget must be a string, {accepted}; got {text!r}")
    match = _BUDGET_RE.match(text.strip().lower())
    if match is None:
        raise ValueError(f"budget must be {accepted}, with no space between; got {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    if number <= 0:
        raise ValueError(f"budget must be > 0, got {text!r}")
    if unit == "bit":
        raise ValueError(
            f"budget {text!r}: write average stored bits per weight as '{match.group(1)}bits' (scales and "
            "zeros included: uniform 4-bit at group size 64 stores 4.5), or give bytes, e.g. '1.2GB'"
        )
    if unit == "bits":
        if number > UNQUANTIZED:
            raise ValueError(f"an avg-bits budget must be at most {UNQUANTIZED}, got {text!r}")
        return Budget("avg_bits", number)
    if unit not in _UNITS:
        raise ValueError(f"budget unit {unit!r} is unknown: budget must be {accepted}; got {text!r}")
    return Budget("bytes", number * _UNITS[unit])


def violations(population: npt.ArrayLike, budget: Budget, table: MemoryTable) -> npt.NDArray[np.float64]:
    """Relative excess over the budget, ``max(0, used / budget - 1)``, of one genome or a population."""
    used = table.avg_bits_of(population) if budget.kind == "avg_bits" else table.bytes_of(population)
    return np.maximum(0.0, np.asarray(used, dtype=np.float64) / budget.value - 1.0)


def violation(genome: npt.ArrayLike, budget: Budget, table: MemoryTable) -> float:
    """Constraint violation of one genome: 0 within the budget, else its relative excess (>= 0)."""
    if np.asarray(genome).ndim != 2:
        raise ValueError(
            f"violation takes one (L, 2) genome (use violations for a population), "
            f"got shape {np.asarray(genome).shape}"
        )
    return float(violations(genome, budget, table))


def _used(genome: Genome, budget: Budget, table: MemoryTable) -> float:
    return float(table.avg_bits_of(genome) if budget.kind == "avg_bits" else table.bytes_of(genome))


def check_budget(budget: Budget, table: MemoryTable) -> bool:
    """Whether even the largest plan of the table's space fits ``budget`` (nothing to search then).

    Raises:
        ValueError: if the smallest plan of the space exceeds the budget; the message gives
            the smallest achievable memory.
    """
    space = table.space
    low, high = smallest_and_largest(table, space)
    floor = f"every {space.granularity} at {space.bit_choices[0]} bits, rank {space.rank_choices[0]}"
    smallest = _used(low, budget, table)
    if smallest > budget.value:
        if budget.kind == "avg_bits":
            amount, detail = f"{smallest:g} avg bits", f"; {int(table.bytes_of(low))} bytes"
        else:
            amount, detail = f"{int(smallest)} bytes", ""
        raise ValueError(
            f"budget {budget.describe()} is below the smallest plan of the search space: {amount} "
            f"({floor}{detail}): "
            f"the smallest achievable memory of this search space is {amount}, so raise the budget "
            "or add smaller bits/ranks"
        )
    return _used(high, budget, table) <= budget.value


def repair(
    rng: np.random.Generator,
    genome: npt.ArrayLike,
    budget: Budget,
    table: MemoryTable,
    sensitivity: npt.ArrayLike | None = None,
) -> Genome:
    """Steps the least sensitive units down one choice at a time until the budget holds.

    Each step picks the unit (block or module; least ``sensitivity`` first, ties by index; a
    random unit when ``sensitivity`` is None) that can still save memory, and lowers whichever
    of its bits or rank index saves more (for an avg-bits budget only bits count).

    Args:
        rng: used only when ``sensitivity`` is None.
        genome: (L, 2) genome.
        budget: the constraint.
        table: prices genomes.
        sensitivity: (L,) per-unit importance (higher = keep precision longer), or None; see
            ``unit_sensitivity`` to spread a per-block profile over modules.

    Returns:
        A feasible (L, 2) genome (a copy; ``genome`` itself if already feasible).

    Raises:
        ValueError: if even the all-minimum genome exceeds the budget (the message gives the
            smallest achievable memory), or ``sensitivity`` has the wrong shape.
    """
    space = table.space
    g = space.check_genome(genome).copy()
    if g.ndim != 2:
        raise ValueError(f"repair takes one (L, 2) genome, got shape {g.shape}")
    L = space.num_units
    check_budget(budget, table)
    if sensitivity is not None:
        sens = np.asarray(sensitivity, dtype=np.float64)
        if sens.shape != (L,):
            raise ValueError(
                f"sensitivity must have shape ({L},), one value per {space.granularity}, got {sens.shape}"
            )
        order = np.lexsort((np.arange(L), sens))
    units = np.arange(L)
    while _used(g, budget, table) > budget.value:
        # saving of one step down per unit and gene: (L, 2)
        cur = table.unit_bytes[units, g[:, 0], g[:, 1]]
        if budget.kind == "avg_bits":
            cur_w = table.unit_bit_weights[units, g[:, 0]]
            down_b = table.unit_bit_weights[units, np.maximum(g[:, 0] - 1, 0)]
            saving = np.stack([cur_w - down_b, np.zeros(L)], axis=1)
        else:
            down_b = table.unit_bytes[units, np.maximum(g[:, 0] - 1, 0), g[:, 1]]
            down_r = table.unit_bytes[units, g[:, 0], np.maximum(g[:, 1] - 1, 0)]
            saving = np.stack([cur - down_b, cur - down_r], axis=1).astype(np.float64)
        can = (saving > 0).any(axis=1)
        assert can.any(), "the all-minimum genome fits, so some step must save memory"
        if sensitivity is None:
            unit = int(rng.choice(np.flatnonzero(can)))
        else:
            unit = int(next(u for u in order if can[u]))
        gene = int(np.argmax(saving[unit]))
        g[unit, gene] -= 1
    return g


def fill(
    rng: np.random.Generator,
    genome: npt.ArrayLike,
    budget: Budget,
    table: MemoryTable,
    sensitivity: npt.ArrayLike | None = None,
    *,
    noise: float = 0.25,
) -> Genome:
    """Steps units up one choice at a time while the budget still holds: ``repair``'s converse.

    A plan far under its budget leaves memory unused that more bits or rank would have put
    to work, so the first population is filled up to the budget. Passes go over the units
    in order of ``sensitivity + noise * N(0, 1)`` (most sensitive first; a random order
    without a profile), raising bits, else rank, by one choice where the result still fits,
    until a pass changes nothing. Under an avg-bits budget rank costs nothing, so only bits
    are raised.

    Args:
        rng: draws the order noise.
        genome: (U, 2) genome within the budget.
        budget: the constraint.
        table: prices genomes.
        sensitivity: (U,) per-unit importance, ideally normalised to [0, 1], or None.
        noise: standard deviation of the order noise, in units of sensitivity.

    Returns:
        A feasible (U, 2) genome (a copy) that no single step up keeps within the budget
        in the order tried.
    """
    space = table.space
    g = space.check_genome(genome).copy()
    if g.ndim != 2:
        raise ValueError(f"fill takes one (U, 2) genome, got shape {g.shape}")
    if _used(g, budget, table) > budget.value:
        raise ValueError("fill takes a genome within the budget; repair it first")
    units = space.num_units
    if sensitivity is None:
        order = rng.permutation(units)
    else:
        sens = np.asarray(sensitivity, dtype=np.float64)
        if sens.shape != (units,):
            raise ValueError(f"sensitivity must have shape ({units},), got {sens.shape}")
        order = np.argsort(-(sens + noise * rng.standard_normal(units)), kind="stable")
    limits = (len(space.bit_choices) - 1, len(space.rank_choices) - 1)
    genes = (0,) if budget.kind == "avg_bits" else (0, 1)
    changed = True
    while changed:
        changed = False
        for unit in order:
            for gene in genes:
                if g[unit, gene] >= limits[gene]:
                    continue
                g[unit, gene] += 1
                if _used(g, budget, table) <= budget.value:
                    changed = True
                    break
                g[unit, gene] -= 1
    return g
