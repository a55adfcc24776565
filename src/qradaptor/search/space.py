"""The search space of (bits, rank) per block, its exact memory table, and the budget constraint.

QR-Adaptor (§3.4) searches one (bits, rank) per transformer block under a memory budget.
A genome is an (L, 2) array of choice indices (see ``nsga2``); this module maps genomes to
Plans and back, prices them with a table precomputed from the memory model (Eq. 5's
Mem(q_l, r_l)), and turns the budget into a constraint violation and a repair step.

Notation:
    L          blocks; genome row l = [bits index, rank index] of block l
    B, R       the ordered bit-width and rank choices (ascending, so index 0 is cheapest)
    T[l,i,j]   bytes of block l's linears (weights, biases, adapters) at (B[i], R[j])
    C          bytes outside the block linears (embedding, head, norms): the same for every genome
    Mem(g)     C + sum_l T[l, g[l,0], g[l,1]], equal to ``plan_memory(...).total_bytes``
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from qradaptor.plan import UNQUANTIZED, Plan, check_bits, check_rank

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure

Genome = npt.NDArray[np.int64]
"""(L, 2) choice indices, or (n, L, 2) for a population."""
BudgetKind = Literal["avg_bits", "bytes"]


def _check_choices(values: object, name: str, check: Any) -> tuple[int, ...]:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{name} must be a non-empty tuple of integers, got {values!r}")
    for value in values:
        check(value, f"every entry of {name}")
    if list(values) != sorted(set(values)):
        raise ValueError(f"{name} must be sorted ascending without repeats, got {values!r}")
    return values


@dataclass(frozen=True)
class SearchSpace:
    """The choices of bits and rank per block (§3.4); fixing one gives the ablations."""

    num_blocks: int
    """Blocks L of the model (genome rows)."""
    bits: tuple[int, ...] = (2, 3, 4, 8)
    """Ordered bit-width choices: each 1..8 or 16 (unquantised), ascending, unique."""
    ranks: tuple[int, ...] = (4, 8, 16)
    """Ordered LoRA rank choices: each >= 0, ascending, unique."""
    fixed_bits: int | None = None
    """If set, every block gets these bits and only ranks are searched (rank-only ablation)."""
    fixed_rank: int | None = None
    """If set, every block gets this rank and only bits are searched (bits-only ablation)."""

    def __post_init__(self) -> None:
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer, got {self.num_blocks!r}")
        _check_choices(self.bits, "bits", check_bits)
        _check_choices(self.ranks, "ranks", check_rank)
        if self.fixed_bits is not None:
            check_bits(self.fixed_bits, "fixed_bits")
        if self.fixed_rank is not None:
            check_rank(self.fixed_rank, "fixed_rank")

    @property
    def bit_choices(self) -> tuple[int, ...]:
        """The bit-widths a genome's column 0 indexes: ``(fixed_bits,)`` when fixed."""
        return self.bits if self.fixed_bits is None else (self.fixed_bits,)

    @property
    def rank_choices(self) -> tuple[int, ...]:
        """The ranks a genome's column 1 indexes: ``(fixed_rank,)`` when fixed."""
        return self.ranks if self.fixed_rank is None else (self.fixed_rank,)

    def check_genome(self, genome: npt.ArrayLike) -> Genome:
        """Returns ``genome`` as int64 if it is (L, 2) or (n, L, 2) with indices in range."""
        g = np.asarray(genome)
        shape_ok = g.ndim in (2, 3) and g.shape[-2:] == (self.num_blocks, 2)
        if not shape_ok or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(
                f"genome must be an integer array of shape ({self.num_blocks}, 2) or "
                f"(n, {self.num_blocks}, 2), got shape {g.shape} and dtype {g.dtype}"
            )
        limits = np.array([len(self.bit_choices), len(self.rank_choices)])
        if (g < 0).any() or (g >= limits).any():
            raise ValueError(
                f"genome indices must lie in 0..{limits[0] - 1} (bits) and 0..{limits[1] - 1} (ranks), "
                f"got min {g.min()} and max per column {g.reshape(-1, 2).max(axis=0).tolist()}"
            )
        return g.astype(np.int64)

    def to_plan(self, genome: npt.ArrayLike, **plan_kwargs: Any) -> Plan:
        """The block Plan of one genome; ``plan_kwargs`` go to ``Plan`` (group_size, alpha, ...)."""
        g = self.check_genome(genome)
        if g.ndim != 2:
            raise ValueError(f"to_plan takes one (L, 2) genome, got shape {g.shape}")
        bits = [self.bit_choices[i] for i in g[:, 0]]
        ranks = [self.rank_choices[j] for j in g[:, 1]]
        return Plan.from_lists(bits, ranks, **plan_kwargs)

    def from_plan(self, plan: Plan) -> Genome:
        """The genome of a block plan whose every (bits, rank) is among this space's choices.

        Raises:
            ValueError: if the plan has another block count, is per module, or uses a value
                outside the choices.
        """
        if plan.num_blocks != self.num_blocks:
            raise ValueError(f"plan has {plan.num_blocks} blocks, the search space {self.num_blocks}")
        genome = np.zeros((self.num_blocks, 2), dtype=np.int64)
        for block, (b, r) in enumerate(zip(plan.block_bits(), plan.block_ranks(), strict=True)):
            if b not in self.bit_choices:
                raise ValueError(f"block {block} has bits {b}, not among the choices {self.bit_choices}")
            if r not in self.rank_choices:
                raise ValueError(f"block {block} has rank {r}, not among the choices {self.rank_choices}")
            genome[block] = (self.bit_choices.index(b), self.rank_choices.index(r))
        return genome


@dataclass(frozen=True, eq=False)
class MemoryTable:
    """Exact bytes and weight bits of every (block, bits, rank) choice: Mem(q_l, r_l) of Eq. 5.

    Build with :meth:`build`; pricing a population is then array indexing.
    """

    space: SearchSpace
    """The choices the table's axes follow."""
    block_bytes: npt.NDArray[np.int64]
    """T: (L, len(bit_choices), len(rank_choices)) bytes of a block's linears and adapters."""
    block_bit_weights: npt.NDArray[np.float64]
    """(L, len(bit_choices)) stored bits x weights of a block's linears (scales and zeros included)."""
    constant_bytes: int
    """C: embedding, head and other parameters, identical for every genome."""
    linear_numel: int
    """Weights in all block linears (the denominator of avg bits)."""

    @classmethod
    def build(
        cls,
        structure: ModelStructure,
        space: SearchSpace,
        *,
        weight_bytes: int = 2,
        adapter_bytes: int = 4,
        **plan_kwargs: Any,
    ) -> MemoryTable:
        """Prices every choice with ``plan_memory`` on uniform plans, so the table matches it exactly.

        Args:
            structure: the model's blocks and linears.
            space: the search space; ``space.num_blocks`` must equal the model's.
            weight_bytes: bytes per unquantised weight (as in ``plan_memory``).
            adapter_bytes: bytes per LoRA parameter (as in ``plan_memory``).
            **plan_kwargs: passed to every Plan (group_size, embed_bits, head_bits, ...).
        """
        from qradaptor.memory import plan_memory

        if structure.num_blocks != space.num_blocks:
            raise ValueError(
                f"space.num_blocks must equal the model's block count ({structure.num_blocks}), "
                f"got {space.num_blocks}"
            )
        plan_kwargs.pop("name", None)
        L, nb, nr = space.num_blocks, len(space.bit_choices), len(space.rank_choices)
        block_bytes = np.zeros((L, nb, nr), dtype=np.int64)
        bit_weights = np.zeros((L, nb), dtype=np.float64)
        prefix = structure.blocks_path + "."
        constant = numel = -1
        for i, bits in enumerate(space.bit_choices):
            for j, rank in enumerate(space.rank_choices):
                report = plan_memory(
                    structure,
                    Plan.uniform(L, bits, rank, **plan_kwargs),
                    weight_bytes=weight_bytes,
                    adapter_bytes=adapter_bytes,
                )
                for layer in report.layers:
                    block = int(layer.path[len(prefix) :].partition(".")[0])
                    block_bytes[block, i, j] += layer.weight_bytes + layer.bias_bytes + layer.adapter_bytes
                    if j == 0:
                        bit_weights[block, i] += layer.bits_per_weight * layer.numel
                constant = report.embed_bytes + report.head_bytes + report.other_bytes
                numel = sum(layer.numel for layer in report.layers)
        return cls(space, block_bytes, bit_weights, constant, numel)

    def bytes_of(self, genome: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Mem(g) in bytes: a 0-d array for one (L, 2) genome, (n,) for an (n, L, 2) population."""
        g = self.space.check_genome(genome)
        blocks = np.arange(self.space.num_blocks)
        per_block = self.block_bytes[blocks, g[..., 0], g[..., 1]]  # (..., L)
        return per_block.sum(axis=-1) + self.constant_bytes

    def avg_bits_of(self, genome: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Average stored bits per block-linear weight (the paper's Avg. Bit), as ``bytes_of``."""
        g = self.space.check_genome(genome)
        blocks = np.arange(self.space.num_blocks)
        return self.block_bit_weights[blocks, g[..., 0]].sum(axis=-1) / self.linear_numel


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
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)\s*$")


def parse_budget(text: str) -> Budget:
    """Parses "3.5bits", "1.2GB", "800MB", "1.5GiB" (case-insensitive; GB = 1e9, GiB = 2**30).

    Raises:
        ValueError: naming the text and the accepted forms.
    """
    accepted = "a number followed by 'bits' (e.g. '3.5bits') or by B, KB, MB, GB, KiB, MiB, GiB"
    if not isinstance(text, str):
        raise ValueError(f"budget must be a string, {accepted}; got {text!r}")
    match = _BUDGET_RE.match(text.lower())
    if match is None:
        raise ValueError(f"budget must be {accepted}; got {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    if number <= 0:
        raise ValueError(f"budget must be > 0, got {text!r}")
    if unit in ("bit", "bits"):
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


def repair(
    rng: np.random.Generator,
    genome: npt.ArrayLike,
    budget: Budget,
    table: MemoryTable,
    sensitivity: npt.ArrayLike | None = None,
) -> Genome:
    """Steps the least sensitive blocks down one choice at a time until the budget holds.

    Each step picks the block (least ``sensitivity`` first, ties by index; a random block
    when ``sensitivity`` is None) that can still save memory, and lowers whichever of its
    bits or rank index saves more (for an avg-bits budget only bits count).

    Args:
        rng: used only when ``sensitivity`` is None.
        genome: (L, 2) genome.
        budget: the constraint.
        table: prices genomes.
        sensitivity: (L,) per-block importance (higher = keep precision longer), or None.

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
    L = space.num_blocks
    floor = np.zeros((L, 2), dtype=np.int64)
    smallest = _used(floor, budget, table)
    if smallest > budget.value:
        unit = "avg bits" if budget.kind == "avg_bits" else "bytes"
        raise ValueError(
            f"budget {budget.describe()} cannot be met: the smallest achievable memory of this "
            f"search space is {smallest:g} {unit} (every block at {space.bit_choices[0]} bits, "
            f"rank {space.rank_choices[0]})"
        )
    if sensitivity is not None:
        sens = np.asarray(sensitivity, dtype=np.float64)
        if sens.shape != (L,):
            raise ValueError(f"sensitivity must have shape ({L},), one value per block, got {sens.shape}")
        order = np.lexsort((np.arange(L), sens))
    blocks = np.arange(L)
    while _used(g, budget, table) > budget.value:
        # saving of one step down per block and gene: (L, 2)
        cur = table.block_bytes[blocks, g[:, 0], g[:, 1]]
        if budget.kind == "avg_bits":
            cur_w = table.block_bit_weights[blocks, g[:, 0]]
            down_b = table.block_bit_weights[blocks, np.maximum(g[:, 0] - 1, 0)]
            saving = np.stack([cur_w - down_b, np.zeros(L)], axis=1)
        else:
            down_b = table.block_bytes[blocks, np.maximum(g[:, 0] - 1, 0), g[:, 1]]
            down_r = table.block_bytes[blocks, g[:, 0], np.maximum(g[:, 1] - 1, 0)]
            saving = np.stack([cur - down_b, cur - down_r], axis=1).astype(np.float64)
        can = (saving > 0).any(axis=1)
        assert can.any(), "the all-minimum genome fits, so some step must save memory"
        if sensitivity is None:
            block = int(rng.choice(np.flatnonzero(can)))
        else:
            block = int(next(b for b in order if can[b]))
        gene = int(np.argmax(saving[block]))
        g[block, gene] -= 1
    return g


def smallest_and_largest(table: MemoryTable, space: SearchSpace) -> tuple[Genome, Genome]:
    """The cheapest genome (every block at the first choices) and the dearest (the last ones).

    Choices are ascending, so these bound Mem(g) over the space; useful to seed a population
    and to check a budget before searching.
    """
    if table.space != space:
        raise ValueError(f"table was built for {table.space}, not for {space}")
    low = np.zeros((space.num_blocks, 2), dtype=np.int64)
    high = np.tile(np.array([len(space.bit_choices) - 1, len(space.rank_choices) - 1]), (space.num_blocks, 1))
    return low, high.astype(np.int64)
