"""Tied units as one search row: a module search whose fused linears share one choice.

vLLM runs a block's q/k/v and gate/up as one fused layer each, so a plan it serves gives
each such group one bit-width (``export.vllm_constraints.fused_groups``). The knapsack
already solves that by making a group one item (``knapsack.tie_items``). The halving
search's other operators (crossover, proximity mutation, repair, fill, the Gaussian-process
neighbourhood) move one genome row at a time, so they would untie a group. Rather than
teach each of them about groups, the search runs on items: an item genome has one row per
item, priced by an item table whose row is the sum of its members' rows (bytes and stored
bits add exactly, and the KLs add under the knapsack's own assumption). Every operator then
keeps ties by construction, and ``expand`` turns an item genome back into the unit genome
that ``SearchSpace.to_plan`` takes.

Notation:
    L          units of the search space (blocks, or (block, module) pairs)
    I          items: units of one tied group of one block are one item, others their own
    member_of  (L,) the item of every unit, items in order of their first unit (block-major)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qradaptor.search.knapsack import tie_items
from qradaptor.search.space import Genome, MemoryTable, SearchSpace


@dataclass(frozen=True, eq=False)
class TiedUnits:
    """The items of a space under ``tied`` groups, and the table that prices item genomes."""

    table: MemoryTable
    """Prices unit genomes (the search space's own table)."""
    items: MemoryTable
    """Prices item genomes: one row per item, the sum of its members' rows."""
    member_of: npt.NDArray[np.int64]
    """(L,) the item of every unit."""

    @classmethod
    def build(cls, table: MemoryTable, tied: Sequence[tuple[str, ...]] = ()) -> TiedUnits:
        """The items of ``table``'s space; without ``tied`` (or per block) each unit is its own.

        Args:
            table: the search space's memory table.
            tied: groups of a block's linear names that share one choice (module spaces only).

        Raises:
            ValueError: for tied groups at block granularity, or names ``tie_items`` refuses.
        """
        space = table.space
        if tied and not space.modules:
            raise ValueError(
                f"tied groups need a module search space (a block's linears already share its "
                f"choice), got tied={list(tied)} at block granularity"
            )
        leaders, member_of = np.unique(tie_items(space, tied), return_inverse=True)
        if len(leaders) == space.num_units:
            return cls(table, table, member_of.astype(np.int64))
        per_block = len(leaders) // space.num_blocks
        block0 = member_of[: len(space.modules)]  # block 0's units are items 0..per_block-1
        names = tuple(
            "+".join(m for m, i in zip(space.modules, block0, strict=True) if i == item)
            for item in range(per_block)
        )
        item_space = SearchSpace(
            space.num_blocks,
            space.bits,
            space.ranks,
            space.fixed_bits,
            space.fixed_rank,
            names,
            space.group_sizes,
        )
        unit_bytes = np.zeros((len(leaders), *table.unit_bytes.shape[1:]), dtype=np.int64)
        bit_weights = np.zeros((len(leaders), table.unit_bit_weights.shape[1]), dtype=np.float64)
        np.add.at(unit_bytes, member_of, table.unit_bytes)
        np.add.at(bit_weights, member_of, table.unit_bit_weights)
        items = MemoryTable(item_space, unit_bytes, bit_weights, table.constant_bytes, table.linear_numel)
        return cls(table, items, member_of.astype(np.int64))

    @property
    def tied(self) -> bool:
        """Whether some item has more than one unit."""
        return self.items is not self.table

    def expand(self, genome: npt.ArrayLike) -> Genome:
        """(I, 2) or (n, I, 2) item genome -> the unit genome, every member taking its item's row."""
        g = self.items.space.check_genome(genome)
        return g[..., self.member_of, :]

    def collapse(self, genome: npt.ArrayLike) -> Genome:
        """(L, 2) or (n, L, 2) unit genome -> the item genome.

        Raises:
            ValueError: if the members of some item differ (the genome is not tied).
        """
        g = self.table.space.check_genome(genome)
        first = np.zeros(self.items.space.num_units, dtype=np.int64)
        first[self.member_of[::-1]] = np.arange(len(self.member_of))[::-1]  # each item's first unit
        collapsed = g[..., first, :]
        if not (collapsed[..., self.member_of, :] == g).all():
            raise ValueError("genome gives the units of one tied group different choices")
        return collapsed

    def values(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(L, K) per-unit values (``knapsack.unit_values``) -> (I, K), each item its members' sum."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape[0] != len(self.member_of):
            units = len(self.member_of)
            raise ValueError(f"values must have one row per unit ({units}), got shape {v.shape}")
        out = np.zeros((self.items.space.num_units, v.shape[1]), dtype=np.float64)
        np.add.at(out, self.member_of, v)
        return out
