"""The search space of (bits, rank) per block or module, and its exact memory table.

QR-Adaptor (§3.4) searches one (bits, rank) per transformer block under a memory budget;
at module granularity each linear module of each block gets its own. A genome is an (L, 2)
array of choice indices (see ``nsga2``); this module maps genomes to Plans and back, prices
them with a table precomputed from the memory model (Eq. 5's Mem(q_l, r_l)); ``budget``
measures genomes against a memory budget with that table.

Notation:
    L          units, the genome rows: blocks, or (block, module) pairs in block-major order
               (unit u is block u // M, module ``modules[u % M]``, for M modules per block)
    B, R       the ordered bit-width and rank choices (ascending, so index 0 is cheapest); with
               ``group_sizes``, B's entries are (bits, group size) pairs, larger groups (less
               metadata) first within one bit-width
    T[u,i,j]   bytes of unit u's linears (weights, biases, adapters) at (B[i], R[j])
    C          bytes outside the block linears (embedding, head, norms): the same for every genome
    Mem(g)     C + sum_u T[u, g[u,0], g[u,1]], equal to ``plan_memory(...).total_bytes``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qradaptor.plan import (
    UNQUANTIZED,
    Granularity,
    LayerSpec,
    Plan,
    check_bits,
    check_group_size_value,
    check_rank,
)

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure

Genome = npt.NDArray[np.int64]
"""(L, 2) choice indices, or (n, L, 2) for a population."""
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 8)
"""Default bit-width choices (ours: the paper lists no set)."""
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16)
"""Default rank choices (ours: the paper lists no set)."""
GRANULARITIES: tuple[Granularity, ...] = ("block", "module")


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
    """The choices of bits and rank per block or module (§3.4); fixing one gives the ablations."""

    num_blocks: int
    """Blocks of the model."""
    bits: tuple[int, ...] = DEFAULT_BITS
    """Ordered bit-width choices: each 1..8 or 16 (unquantised), ascending, unique."""
    ranks: tuple[int, ...] = DEFAULT_RANKS
    """Ordered LoRA rank choices: each >= 0, ascending, unique."""
    fixed_bits: int | None = None
    """If set, every unit gets these bits and only ranks are searched (rank-only ablation)."""
    fixed_rank: int | None = None
    """If set, every unit gets this rank and only bits are searched (bits-only ablation)."""
    modules: tuple[str, ...] = ()
    """Linear names of one block ("self_attn.q_proj", ...): empty searches per block (genome rows
    are blocks); non-empty searches per module (rows are (block, module) units, block-major)."""
    group_sizes: tuple[int, ...] = ()
    """Per-unit group-size choices, ascending; empty: every unit at the plan's group size. When
    set, every quantised bit-width is offered at each of them (see ``quant_choices``)."""

    def __post_init__(self) -> None:
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer, got {self.num_blocks!r}")
        _check_choices(self.bits, "bits", check_bits)
        _check_choices(self.ranks, "ranks", check_rank)
        if self.fixed_bits is not None:
            check_bits(self.fixed_bits, "fixed_bits")
        if self.fixed_rank is not None:
            check_rank(self.fixed_rank, "fixed_rank")
        names = self.modules
        if (
            not isinstance(names, tuple)
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise ValueError(
                f"modules must be a tuple of unique non-empty module names (empty for block "
                f"granularity), got {names!r}"
            )
        if self.group_sizes:
            _check_choices(self.group_sizes, "group_sizes", check_group_size_value)

    @classmethod
    def for_structure(
        cls,
        structure: ModelStructure,
        granularity: Granularity = "block",
        *,
        bits: tuple[int, ...] = DEFAULT_BITS,
        ranks: tuple[int, ...] = DEFAULT_RANKS,
        fixed_bits: int | None = None,
        fixed_rank: int | None = None,
        group_sizes: tuple[int, ...] = (),
    ) -> SearchSpace:
        """The space of a model: its block count and, per module, its linear names.

        Args:
            structure: the model's blocks and linears.
            granularity: "block" (one choice per block, the paper's) or "module" (one per linear).
            bits, ranks, fixed_bits, fixed_rank, group_sizes: as the fields of the same names.

        Raises:
            ValueError: for an unknown granularity, invalid choices, or a group size that does
                not divide every linear's input size (any unit may take any choice).
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        modules = structure.linear_names if granularity == "module" else ()
        for group_size in group_sizes:
            check_group_size_value(group_size, "every entry of group_sizes")
            bad = [info for info in structure.linears if info.in_features % group_size]
            if bad:
                common = math.gcd(*(info.in_features for info in structure.linears))
                fits = [g for g in range(16, common + 1, 16) if common % g == 0]
                raise ValueError(
                    f"group_sizes: {group_size} does not divide the input size {bad[0].in_features} of "
                    f"{bad[0].name}; a group-size choice must divide every linear's input, e.g. {fits}"
                )
        return cls(structure.num_blocks, bits, ranks, fixed_bits, fixed_rank, modules, group_sizes)

    @property
    def granularity(self) -> Granularity:
        """ "block" (rows are blocks) or "module" (rows are (block, module) units)."""
        return "module" if self.modules else "block"

    @property
    def num_units(self) -> int:
        """L, the genome rows: blocks, or blocks x modules."""
        return self.num_blocks * max(len(self.modules), 1)

    @property
    def unit_names(self) -> tuple[str, ...]:
        """The Plan key of every row: "3" per block, "3.self_attn.q_proj" per module."""
        if not self.modules:
            return tuple(str(b) for b in range(self.num_blocks))
        return tuple(f"{b}.{m}" for b in range(self.num_blocks) for m in self.modules)

    @property
    def unit_block(self) -> npt.NDArray[np.int64]:
        """(L,) the block of every row."""
        return np.arange(self.num_units, dtype=np.int64) // max(len(self.modules), 1)

    @property
    def quant_choices(self) -> tuple[tuple[int, int | None], ...]:
        """(bits, group size) of each index of a genome's column 0, ascending in stored bits.

        The group size is None (the plan's) without ``group_sizes`` and at 16 bits; with them,
        each quantised bit-width comes once per group size, the largest (cheapest) first.
        """
        bits = self.bits if self.fixed_bits is None else (self.fixed_bits,)
        if not self.group_sizes:
            return tuple((b, None) for b in bits)
        return tuple((b, g) for b in bits for g in ((None,) if b == UNQUANTIZED else self.group_sizes[::-1]))

    @property
    def bit_choices(self) -> tuple[int, ...]:
        """The bit-widths a genome's column 0 indexes: ``(fixed_bits,)`` when fixed.

        With ``group_sizes`` a bit-width repeats, once per group size (see ``quant_choices``).
        """
        return tuple(b for b, _ in self.quant_choices)

    @property
    def rank_choices(self) -> tuple[int, ...]:
        """The ranks a genome's column 1 indexes: ``(fixed_rank,)`` when fixed."""
        return self.ranks if self.fixed_rank is None else (self.fixed_rank,)

    def check_genome(self, genome: npt.ArrayLike) -> Genome:
        """Returns ``genome`` as int64 if it is (L, 2) or (n, L, 2) with indices in range."""
        g = np.asarray(genome)
        L = self.num_units
        shape_ok = g.ndim in (2, 3) and g.shape[-2:] == (L, 2)
        if not shape_ok or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(
                f"genome must be an integer array of shape ({L}, 2) or (n, {L}, 2), one row per "
                f"{self.granularity}, got shape {g.shape} and dtype {g.dtype}"
            )
        limits = np.array([len(self.bit_choices), len(self.rank_choices)])
        if (g < 0).any() or (g >= limits).any():
            raise ValueError(
                f"genome indices must lie in 0..{limits[0] - 1} (bits) and 0..{limits[1] - 1} (ranks), "
                f"got min {g.min()} and max per column {g.reshape(-1, 2).max(axis=0).tolist()}"
            )
        return g.astype(np.int64)

    def to_plan(self, genome: npt.ArrayLike, **plan_kwargs: Any) -> Plan:
        """The Plan of one genome, of this space's granularity; ``plan_kwargs`` go to ``Plan``."""
        g = self.check_genome(genome)
        if g.ndim != 2:
            raise ValueError(f"to_plan takes one (L, 2) genome, got shape {g.shape}")
        quant = self.quant_choices
        layers = {
            key: LayerSpec(quant[i][0], self.rank_choices[j], quant[i][1])
            for key, (i, j) in zip(self.unit_names, g.tolist(), strict=True)
        }
        return Plan(layers, self.num_blocks, **plan_kwargs)

    def from_plan(self, plan: Plan) -> Genome:
        """The genome of a plan whose every (bits, rank) is among this space's choices.

        A block space takes block plans; a module space takes module plans keyed by exactly
        its ``unit_names``, or a block plan (each module gets its block's choice).

        Raises:
            ValueError: if the plan has another block count, another granularity or other
                module keys, or uses a value outside the choices.
        """
        if plan.num_blocks != self.num_blocks:
            raise ValueError(f"plan has {plan.num_blocks} blocks, the search space {self.num_blocks}")
        if plan.granularity == "module":
            if not self.modules:
                raise ValueError("plan is per module, the search space per block")
            missing = sorted(set(self.unit_names) - set(plan.layers))
            extra = sorted(set(plan.layers) - set(self.unit_names))
            if missing or extra:
                raise ValueError(
                    f"module plan keys must be exactly the search space's units: missing "
                    f"{missing[:4]} ({len(missing)} in all), unexpected {extra[:4]} ({len(extra)} in all)"
                )
        genome = np.zeros((self.num_units, 2), dtype=np.int64)
        for unit, key in enumerate(self.unit_names):
            block, _, module = key.partition(".")
            spec = plan.spec_for(int(block), module)
            where = f"{self.granularity} {key}"
            if spec.bits not in self.bit_choices:
                raise ValueError(f"{where} has bits {spec.bits}, not among the choices {self.bit_choices}")
            if spec.rank not in self.rank_choices:
                raise ValueError(f"{where} has rank {spec.rank}, not among the choices {self.rank_choices}")
            grouped = self.group_sizes and spec.bits != UNQUANTIZED
            quant = (spec.bits, plan.group_size_of(spec) if grouped else None)
            if quant not in self.quant_choices:
                raise ValueError(
                    f"{where} has group size {plan.group_size_of(spec)}, not among the choices "
                    f"{self.group_sizes}"
                )
            genome[unit] = (self.quant_choices.index(quant), self.rank_choices.index(spec.rank))
        return genome


@dataclass(frozen=True, eq=False)
class MemoryTable:
    """Exact bytes and weight bits of every (unit, bits, rank) choice: Mem(q_l, r_l) of Eq. 5.

    Build with :meth:`build`; pricing a population is then array indexing.
    """

    space: SearchSpace
    """The choices the table's axes follow."""
    unit_bytes: npt.NDArray[np.int64]
    """T: (L, len(bit_choices), len(rank_choices)) bytes of a unit's linears and adapters."""
    unit_bit_weights: npt.NDArray[np.float64]
    """(L, len(bit_choices)) stored bits x weights of a unit's linears (scales and zeros included)."""
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
            space: the search space; ``space.num_blocks`` must equal the model's and, per
                module, ``space.modules`` its ``linear_names`` (see ``SearchSpace.for_structure``).
            weight_bytes: bytes per unquantised weight (as in ``plan_memory``).
            adapter_bytes: bytes per LoRA parameter (as in ``plan_memory``).
            **plan_kwargs: passed to every Plan (group_size, embed_bits, head_bits, ...).

        Raises:
            ValueError: if the space's blocks or modules are not the model's.
        """
        from qradaptor.memory import plan_memory

        if structure.num_blocks != space.num_blocks:
            raise ValueError(
                f"space.num_blocks must equal the model's block count ({structure.num_blocks}), "
                f"got {space.num_blocks}"
            )
        if space.modules and space.modules != structure.linear_names:
            raise ValueError(
                f"space.modules must equal the model's linear names in order, "
                f"{structure.linear_names}, got {space.modules}"
            )
        plan_kwargs.pop("name", None)
        L, nb, nr = space.num_units, len(space.bit_choices), len(space.rank_choices)
        unit_of = {key: u for u, key in enumerate(space.unit_names)}
        unit_bytes = np.zeros((L, nb, nr), dtype=np.int64)
        bit_weights = np.zeros((L, nb), dtype=np.float64)
        prefix = structure.blocks_path + "."
        constant = numel = -1
        # A linear's bytes depend only on its own (bits, rank), so uniform plans price every unit.
        for i, (bits, group_size) in enumerate(space.quant_choices):
            for j, rank in enumerate(space.rank_choices):
                spec = LayerSpec(bits, rank, group_size)
                report = plan_memory(
                    structure,
                    Plan({str(b): spec for b in range(space.num_blocks)}, space.num_blocks, **plan_kwargs),
                    weight_bytes=weight_bytes,
                    adapter_bytes=adapter_bytes,
                )
                for layer in report.layers:
                    key = layer.path[len(prefix) :]  # "3.self_attn.q_proj"
                    u = unit_of[key if space.modules else key.partition(".")[0]]
                    unit_bytes[u, i, j] += layer.weight_bytes + layer.bias_bytes + layer.adapter_bytes
                    if j == 0:
                        bit_weights[u, i] += layer.bits_per_weight * layer.numel
                constant = report.embed_bytes + report.head_bytes + report.other_bytes
                numel = sum(layer.numel for layer in report.layers)
        return cls(space, unit_bytes, bit_weights, constant, numel)

    def bytes_of(self, genome: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Mem(g) in bytes: a 0-d array for one (L, 2) genome, (n,) for an (n, L, 2) population."""
        g = self.space.check_genome(genome)
        units = np.arange(self.space.num_units)
        per_unit = self.unit_bytes[units, g[..., 0], g[..., 1]]  # (..., L)
        return per_unit.sum(axis=-1) + self.constant_bytes

    def avg_bits_of(self, genome: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Average stored bits per block-linear weight (the paper's Avg. Bit), as ``bytes_of``."""
        g = self.space.check_genome(genome)
        units = np.arange(self.space.num_units)
        return self.unit_bit_weights[units, g[..., 0]].sum(axis=-1) / self.linear_numel


def smallest_and_largest(table: MemoryTable, space: SearchSpace) -> tuple[Genome, Genome]:
    """The cheapest genome (every unit at the first choices) and the dearest (the last ones).

    Choices are ascending, so these bound Mem(g) over the space; useful to seed a population
    and to check a budget before searching.
    """
    if table.space != space:
        raise ValueError(f"table was built for {table.space}, not for {space}")
    low = np.zeros((space.num_units, 2), dtype=np.int64)
    high = np.tile(np.array([len(space.bit_choices) - 1, len(space.rank_choices) - 1]), (space.num_units, 1))
    return low, high.astype(np.int64)


def unit_sensitivity(space: SearchSpace, block_sensitivity: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-unit sensitivity from a per-block profile: each block's value repeated for its modules.

    The paper profiles per layer (Eq. 6, ``sensitivity.py``), so at module granularity every
    module of a block shares the block's value (per-module profiling is future work); at block
    granularity this is the identity.

    Args:
        space: the search space.
        block_sensitivity: (num_blocks,) one value per block.

    Returns:
        (num_units,) float64, unit u taking the value of block ``space.unit_block[u]``.

    Raises:
        ValueError: if ``block_sensitivity`` is not one value per block.
    """
    s = np.asarray(block_sensitivity, dtype=np.float64)
    if s.shape != (space.num_blocks,):
        raise ValueError(
            f"block_sensitivity must have one value per block ({space.num_blocks}), got shape {s.shape}"
        )
    return s[space.unit_block]
