"""The exact allocator: a multiple-choice knapsack over a sensitivity table.

The cheapest allocation a search must beat (HAWQ-V3, LQ-LoRA and AutoRound allocate bits
this way): every unit takes one bit-width, the summed sensitivity is minimised, and the plan
stays within the budget, exactly as the memory table prices it:

    minimise    sum_u S_u(b_u)
    subject to  sum_u cost_u(b_u) <= capacity

where S_u(b) is the KL of quantising unit u alone at b bits (Eq. 6, ``sensitivity.py``;
S = 0 at 16 bits, the reference), and cost_u(b) is the unit's stored bits (an avg-bits
budget: capacity = budget x block-linear weights) or its bytes (a byte budget: capacity =
budget - the bytes every plan shares). Adding per-unit KLs assumes the errors of different
units add, the usual first-order view; the search's proxy measures what that misses.

Here every unit keeps one given rank. Under an avg-bits budget rank costs nothing, so the
largest is free; under a byte budget its bytes are counted exactly, and a rank's benefit, which
the KL table cannot see, is measured: ``knapsack_ranks`` chooses ranks too from one.

Solved exactly by dynamic programming over the Pareto list of (cost, value) states: after
each unit only states that no cheaper state beats are kept, so the list stays short when many
units cost the same (identical blocks), and no cost grid is needed for byte budgets.

At module granularity a unit is one linear of one block and S_u its own KL (a per-module
profile, ``qra profile --granularity module``). Units that must share one choice (vLLM's
fused q/k/v and gate/up, ``tied``) become one item whose cost is the sum of theirs, exactly,
and whose KL is the sum of theirs: the same additivity assumption, now within a block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qradaptor.plan import UNQUANTIZED, Granularity
from qradaptor.search.budget import Budget, check_budget, violation
from qradaptor.search.space import Genome, MemoryTable, SearchSpace

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan
    from qradaptor.sensitivity_table import SensitivityTable


def solve_mckp(costs: npt.ArrayLike, values: npt.ArrayLike, capacity: int) -> npt.NDArray[np.int64] | None:
    """Exact multiple-choice knapsack: one choice per row, least total value within capacity.

    Args:
        costs: (L, K) non-negative integer cost of choice k of unit l.
        values: (L, K) value (to minimise) of choice k of unit l; ``inf`` forbids a choice.
        capacity: the largest total cost allowed.

    Returns:
        (L,) chosen indices with the least total value within ``capacity`` (ties: the least
        total cost, then the lower index at the earliest unit), or None if no selection fits.
    """
    c = np.asarray(costs)
    v = np.asarray(values, dtype=np.float64)
    if c.ndim != 2 or c.shape != v.shape or c.shape[0] < 1 or c.shape[1] < 1:
        raise ValueError(f"costs and values must be (L, K) arrays of one shape, got {c.shape} and {v.shape}")
    if not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise ValueError("costs must be non-negative integers")
    c = c.astype(np.int64)
    v = _drop_dominated(c, v)
    allowed = np.isfinite(v)
    if not allowed.any(axis=1).all():
        return None
    # Cheapest and dearest allowed completion of the units after each one: (L,) each.
    least = np.where(allowed, c, np.iinfo(np.int64).max).min(axis=1)
    most = np.where(allowed, c, 0).max(axis=1)
    least_after = np.concatenate([np.cumsum(least[::-1])[::-1][1:], [0]])
    most_after = np.concatenate([np.cumsum(most[::-1])[::-1][1:], [0]])
    # The frontier: states sorted by cost with strictly falling value; parents rebuild the choice.
    cost = np.zeros(1, dtype=np.int64)
    value = np.zeros(1, dtype=np.float64)
    parents: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
    for unit in range(c.shape[0]):
        new_cost = (cost[:, None] + c[unit][None, :]).ravel()  # (S * K,)
        new_value = (value[:, None] + v[unit][None, :]).ravel()
        state = np.repeat(np.arange(cost.size), c.shape[1])
        choice = np.tile(np.arange(c.shape[1]), cost.size)
        # Exact pruning: a state no completion can fit within capacity is dropped.
        keep = (new_cost <= capacity - least_after[unit]) & np.isfinite(new_value)
        if not keep.any():
            return None
        new_cost, new_value, state, choice = new_cost[keep], new_value[keep], state[keep], choice[keep]
        # By cost, then value; lexsort is stable and the candidates come in (state, choice)
        # order, so ties keep the lower state, then the lower choice.
        order = np.lexsort((new_value, new_cost))
        new_cost, new_value, state, choice = new_cost[order], new_value[order], state[order], choice[order]
        # Keep a state only if it beats every cheaper (or equally cheap, earlier) one.
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(new_value)[:-1]])
        front = np.flatnonzero(new_value < best_before)
        # Exact pruning: states whose every completion fits all end best completed alike, so
        # only the least valued of them (the dearest: values fall along the front) can win.
        roomy = np.flatnonzero(new_cost[front] <= capacity - most_after[unit])
        if roomy.size:
            front = front[roomy[-1] :]
        cost, value = new_cost[front], new_value[front]
        parents.append((state[front], choice[front]))
    # Values fall along the frontier, so its last state is the least value (the cheapest such).
    picked = np.zeros(c.shape[0], dtype=np.int64)
    index = cost.size - 1
    for unit in range(c.shape[0] - 1, -1, -1):
        state, choice = parents[unit]
        picked[unit] = choice[index]
        index = state[index]
    return picked


def unit_costs(table: MemoryTable, budget: Budget) -> tuple[npt.NDArray[np.int64], int]:
    """(L, K, R) integer cost of each unit's bit and rank choice under ``budget``, and the capacity.

    Avg bits: stored bits (whole numbers, 8 x bytes, so the comparison is exact; rank costs
    none). Bytes: each unit's bytes, adapters included, within the budget less what every plan
    shares.
    """
    if budget.kind == "avg_bits":
        bits = np.rint(table.unit_bit_weights).astype(np.int64)  # (L, K)
        costs = np.repeat(bits[:, :, None], len(table.space.rank_choices), axis=2)
        return costs, int(np.floor(budget.value * table.linear_numel + 1e-6))
    return table.unit_bytes, int(np.floor(budget.value)) - table.constant_bytes


def _drop_dominated(c: npt.NDArray[np.int64], v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``v`` with inf where another choice of the row costs no more and is worth no more (better
    in one, or equal in both at a lower index): the tie rules never pick such a choice, so the
    frontier need not carry it (a rank-16 choice a rank-4 choice one bit up beats on both)."""
    index = np.arange(c.shape[1])
    cost_j, cost_k = c[:, :, None], c[:, None, :]  # (L, K, K): is choice j dominated by choice k?
    value_j, value_k = v[:, :, None], v[:, None, :]
    no_worse = (cost_k <= cost_j) & (value_k <= value_j) & np.isfinite(value_k)
    better = (cost_k < cost_j) | (value_k < value_j) | (index[None, None, :] < index[None, :, None])
    return np.where((no_worse & better).any(axis=2), np.inf, v)


def solve_items(
    costs: npt.ArrayLike, values: npt.ArrayLike, capacity: int, items: npt.ArrayLike | None
) -> npt.NDArray[np.int64] | None:
    """``solve_mckp`` over units, where units of one item (``tie_items``) take one choice.

    Each item is one row whose costs and values are its members' summed; its choice is then
    handed back to every member. None of ``items`` solves the units as they are.
    """
    c, v = np.asarray(costs), np.asarray(values, dtype=np.float64)
    if items is None:
        return solve_mckp(c, v, capacity)
    _, member_of = np.unique(np.asarray(items), return_inverse=True)
    if member_of.shape != (c.shape[0],):
        raise ValueError(f"items must have one entry per unit ({c.shape[0]}), got {np.shape(items)}")
    item_costs = np.zeros((member_of.max() + 1, c.shape[1]), dtype=np.int64)
    item_values = np.zeros(item_costs.shape, dtype=np.float64)
    np.add.at(item_costs, member_of, c)
    np.add.at(item_values, member_of, v)
    chosen = solve_mckp(item_costs, item_values, capacity)
    return None if chosen is None else chosen[member_of]


def unit_values(
    space: SearchSpace, sensitivity: SensitivityTable | Sequence[SensitivityTable]
) -> npt.NDArray[np.float64]:
    """(L, len(bit_choices)) S_u(b) for every unit and bit choice; 0 at 16 bits.

    Args:
        space: the choices; with ``group_sizes``, one table per group size is needed.
        sensitivity: one table, or one per group size of the space (profiled at that size).

    Raises:
        ValueError: if a table is of another granularity than the space, has another block
            count or other modules, lacks a quantised bit choice, or no table has a group size
            of the space.
    """
    tables = _tables(sensitivity)
    for table in tables:
        table.require_granularity(space.granularity, f"the knapsack at {space.granularity} granularity")
        if table.modules != space.modules:
            raise ValueError(
                f"sensitivity table profiled modules {table.modules}, the model's linears are "
                f"{space.modules}: it was profiled on another model"
            )
    by_group = {t.group_size: t for t in tables}
    if space.group_sizes:
        lacking = [g for g in space.group_sizes if g not in by_group]
        if lacking:
            raise ValueError(
                f"sensitivity tables cover group sizes {sorted(by_group)}, the choices need "
                f"{list(space.group_sizes)}: profile group sizes {lacking} (qra profile --group-size)"
            )
    elif len(tables) != 1:
        raise ValueError(f"a space without group-size choices takes one sensitivity table, got {len(tables)}")
    columns = []
    for b, g in space.quant_choices:
        table = tables[0] if g is None else by_group[g]
        if table.num_blocks != space.num_blocks:
            raise ValueError(
                f"sensitivity table has {table.num_blocks} blocks, the model {space.num_blocks}: "
                "it was profiled on another model"
            )
        if b == UNQUANTIZED:
            columns.append(np.zeros(space.num_units))
        elif b not in table.bits:
            missing = sorted({c for c in space.bit_choices if c != UNQUANTIZED} - set(table.bits))
            raise ValueError(
                f"sensitivity table lacks bits {missing} of the choices "
                f"{tuple(sorted(set(space.bit_choices)))}; it has {table.bits}: profile those bits "
                "(qra profile --bits) or drop them"
            )
        else:
            columns.append(np.asarray(table.column(b)))
    return np.stack(columns, axis=1)  # (L, K)


def _tables(sensitivity: SensitivityTable | Sequence[SensitivityTable]) -> tuple[SensitivityTable, ...]:
    from qradaptor.sensitivity_table import SensitivityTable

    tables = (sensitivity,) if isinstance(sensitivity, SensitivityTable) else tuple(sensitivity)
    if not tables:
        raise ValueError("sensitivity must be a table or a non-empty sequence of tables, got none")
    sizes = [t.group_size for t in tables]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sensitivity tables must each have their own group size, got group sizes {sizes}")
    return tables


def lowest_at_rank(space: SearchSpace, rank_index: int) -> Genome:
    """(L, 2) the cheapest genome of ``space`` with every unit at rank choice ``rank_index``."""
    low = np.zeros((space.num_units, 2), dtype=np.int64)
    low[:, 1] = rank_index
    return low


def tie_items(space: SearchSpace, tied: Sequence[tuple[str, ...]]) -> npt.NDArray[np.int64]:
    """(L,) the knapsack item of every unit: units of one block named in one ``tied`` group
    share an item (one choice); every other unit is an item of its own.

    Args:
        space: a module space (at block granularity a block's linears already share a choice,
            so every unit is its own item).
        tied: groups of linear names of one block, e.g. ("self_attn.q_proj", "self_attn.k_proj").

    Raises:
        ValueError: for a name that is not one of the space's modules, or in two groups.
    """
    items = np.arange(space.num_units, dtype=np.int64)
    if not space.modules:
        return items
    seen: set[str] = set()
    for group in tied:
        unknown = [name for name in group if name not in space.modules]
        twice = [name for i, name in enumerate(group) if name in seen or name in group[:i]]
        if unknown or twice:
            raise ValueError(
                f"tied groups must name distinct linears among {space.modules}, got "
                f"{unknown[0] if unknown else twice[0]!r} in {group}"
            )
        seen.update(group)
        index = [space.modules.index(name) for name in group]
        for block in range(space.num_blocks):
            units = block * len(space.modules) + np.asarray(index)
            items[units] = units[0]
    return items


def knapsack_genome(
    table: MemoryTable,
    values: npt.ArrayLike,
    budget: Budget,
    *,
    rank: int,
    items: npt.ArrayLike | None = None,
) -> Genome:
    """The genome of least summed value within ``budget``, every unit at ``rank``.

    Args:
        table: prices genomes; its space gives the choices.
        values: (L, len(bit_choices)) per-unit value of each bit choice (``unit_values``).
        budget: avg bits (costs: stored bits) or bytes (costs: bytes, adapters included).
        rank: the rank of every unit; one of the space's rank choices.
        items: (L,) optional item of each unit (``tie_items``): units of one item take one
            choice, costing and scoring the sum of theirs; default every unit its own.

    Returns:
        (L, 2) genome within the budget.

    Raises:
        ValueError: if ``rank`` is not a choice, ``values`` has the wrong shape, or even the
            smallest plan exceeds the budget (naming the smallest reachable memory).
    """
    space = table.space
    if rank not in space.rank_choices:
        raise ValueError(f"rank must be one of the rank choices {space.rank_choices}, got {rank!r}")
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (space.num_units, len(space.bit_choices)):
        raise ValueError(
            f"values must have shape ({space.num_units}, {len(space.bit_choices)}), got {v.shape}"
        )
    j = space.rank_choices.index(rank)
    low = lowest_at_rank(space, j)
    if violation(low, budget, table) > 0:
        check_budget(budget, table)  # raises with the smallest plan of the space when that is over
        raise ValueError(
            f"budget {budget.describe()} is below the smallest plan at rank {rank}: "
            f"{_amount(low, budget, table)}; raise the budget or lower the rank"
        )
    costs, capacity = unit_costs(table, budget)
    picked = solve_items(costs[:, :, j], v, capacity, items)
    assert picked is not None, "the smallest plan fits, so the knapsack has a solution"
    genome = np.stack([picked, np.full_like(picked, j)], axis=1)
    assert violation(genome, budget, table) == 0, "the knapsack's costs are the table's"
    return genome


def dearest_within(table: MemoryTable, budget: Budget) -> Genome:
    """The genome of most bytes within an avg-bits ``budget``, every unit at the largest rank.

    What a search that scores only plans within its budget (no uniform references) holds at
    most: under avg bits a unit's bytes are its bits' plus its rank's and rank costs no bits,
    so the largest rank is free and the dearest bits within the budget are a knapsack over
    negated bytes, exact.

    Raises:
        ValueError: for a byte budget (rank and bits trade there: bound by the space's
            largest plan instead), or one below the smallest plan.
    """
    if budget.kind != "avg_bits":
        raise ValueError(f"dearest_within needs an avg-bits budget, got {budget.describe()}")
    rank = table.space.rank_choices[-1]
    values = -table.unit_bytes[:, :, -1].astype(np.float64)  # least negated bytes = most bytes
    return knapsack_genome(table, values, budget, rank=rank)


def _amount(genome: Genome, budget: Budget, table: MemoryTable) -> str:
    if budget.kind == "avg_bits":
        return f"{float(table.avg_bits_of(genome)):g} avg bits"
    return f"{int(table.bytes_of(genome))} bytes"


def chooses_ranks_by_default(budget: Budget, rank: int | None) -> bool:
    """Whether ``knapsack_plan`` given no ``rank`` and no ``rank_benefit`` chooses each unit's
    rank (bits first, ``knapsack_ranks.bytes_left_to_ranks``): under a byte budget, where
    adapters cost bytes; under avg bits they cost none and every unit gets rank 16."""
    return rank is None and budget.kind == "bytes"


def knapsack_plan(
    structure: ModelStructure,
    sensitivity: SensitivityTable | Sequence[SensitivityTable],
    budget: Budget,
    *,
    bits: tuple[int, ...] | None = None,
    rank: int | None = None,
    granularity: Granularity = "block",
    tied: Sequence[tuple[str, ...]] = (),
    rank_benefit: Mapping[int, float] | None = None,
    **plan_kwargs: Any,
) -> Plan:
    """The knapsack baseline of a model: least summed KL within ``budget``, per block or per
    module, at one rank or with the ranks chosen too.

    Args:
        structure: the model's blocks and linears.
        sensitivity: its profile at ``granularity`` (``profile_sensitivity`` or a ``qra
            profile`` file), fitted at the plan's group size, quantisation method and double
            quantisation; or several, one per group size, and each unit then also chooses its
            group size among theirs (entries at another size than the plan's carry their own).
        budget: avg bits or bytes, as ``parse_budget`` reads them.
        bits: the bit choices (ascending; 16 = unquantised, KL 0); default the profiled ones.
        rank: the LoRA rank of every unit (without ``rank_benefit``). None: 16 under an avg
            bits budget (adapters cost no bits); under a byte budget each unit's rank among
            4, 8, 16, bits first (``knapsack_ranks.bytes_left_to_ranks``).
        granularity: "block" (one choice per block) or "module" (one per linear of a block;
            needs a per-module profile).
        tied: at module granularity, groups of a block's linear names that share one choice
            (e.g. ``export.vllm_constraints.fused_groups``); each group is one knapsack item
            whose KL is the sum of its members' (additivity assumed, not measured).
        rank_benefit: held-out nats each rank gains over the smallest (``knapsack_ranks``):
            each unit then chooses its rank among these too, and ``rank`` is unused.
        **plan_kwargs: passed to the Plan (group_size, quant_method, double_quant, alpha,
            embed_bits, ...); ``name`` defaults to e.g. "knapsack-4.0bits-r16".

    Returns:
        The plan, stamped with the model's signature.

    Raises:
        ValueError: for a table of another granularity, model, bits, group size or quantiser,
            a group size that does not divide every linear, a budget below the smallest plan
            (naming it), or bad choices or tied names.
    """
    tables = _tables(sensitivity)
    group_size = plan_kwargs.get("group_size", 64)
    method = plan_kwargs.get("quant_method", "hqq")
    double_quant = plan_kwargs.get("double_quant", False)
    for table in tables:
        wanted = (group_size if len(tables) == 1 else table.group_size, method, double_quant)
        if (table.group_size, table.quant_method, table.double_quant) != wanted:
            dq = (
                ", double-quantised" if table.double_quant else "",
                ", double-quantised" if double_quant else "",
            )
            raise ValueError(
                f"sensitivity table was profiled at group size {table.group_size} with "
                f"{table.quant_method}{dq[0]}, the plan quantises at group size {group_size} with "
                f"{method}{dq[1]}: profile again with the plan's settings, or give the plan the table's"
            )
    choices = tuple(tables[0].bits) if bits is None else tuple(bits)
    group_sizes = tuple(sorted(t.group_size for t in tables)) if len(tables) > 1 else ()
    if rank_benefit is None and chooses_ranks_by_default(budget, rank):
        from qradaptor.search.knapsack_ranks import bytes_left_to_ranks

        rank_benefit = bytes_left_to_ranks()
    rank = 16 if rank is None else rank
    if rank_benefit is not None:
        from qradaptor.search.knapsack_ranks import check_rank_benefit, knapsack_genome_ranks

        rank_benefit = check_rank_benefit(rank_benefit)
    ranks = (rank,) if rank_benefit is None else tuple(rank_benefit)
    space = SearchSpace.for_structure(
        structure, granularity, bits=choices, ranks=ranks, group_sizes=group_sizes
    )
    values = unit_values(space, sensitivity)  # the tables' granularity checked before pricing
    items = tie_items(space, tied)
    per = "-module" if space.modules else ""
    tag = f"r{rank}" if rank_benefit is None else "ranks"
    name = plan_kwargs.pop("name", None) or f"knapsack{per}-{_budget_label(budget)}-{tag}"
    plan_kwargs.setdefault("model_signature", structure.signature)
    table = MemoryTable.build(structure, space, **plan_kwargs)
    if rank_benefit is None:
        genome = knapsack_genome(table, values, budget, rank=rank, items=items)
    else:
        genome = knapsack_genome_ranks(table, values, budget, rank_benefit, items=items)
    return space.to_plan(genome, name=name, **plan_kwargs)


def _budget_label(budget: Budget) -> str:
    if budget.kind == "avg_bits":
        return f"{budget.value:g}bits"
    return f"{budget.value / 1e6:g}MB"
