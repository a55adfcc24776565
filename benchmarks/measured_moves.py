"""Does a measured step away from the knapsack plan beat it? Forward only, on the embedded SmolLM2.

The knapsack adds per-block KLs measured one block at a time (every other block at 16 bits).
This measures instead, in the context of the current plan g, the selection loss of moving each
block one bit choice down and one up (2 x blocks forward passes, as the search's rung 0 scores a
plan: ``ProxyEvaluator`` with 0 steps), then solves the same exact knapsack over those measured
deltas (each block: down, stay or up, within the budget) and measures the plan it gives; it
repeats from there while the measured loss falls. Both plans are then scored on the test texts
(ppl_wiki on ``embedded:boolq-heldout``, ppl_lambada), quantised only, as
``allocation_quantised.py`` scores plans.

    python benchmarks/measured_moves.py --budget 4.0 \
        --sensitivity docs/results/paper/profiles/profile-a37a7798/sensitivity.json

Bits {2,3,4,5,6,8}, 8-bit scales and zeros, group 64, rank 16 (the ``qra-dq`` space); selection
on ``embedded:wiki-selection`` (``--windows`` x 4 windows of 512 tokens, the full preset's 16).
About 20 s a forward pass on a 2-core CPU, so an iteration is about 20 minutes.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from allocation_quantised import quantised_ppl
from selection_loss import BATCH, selection_evaluator

from qradaptor.cli.common import read_sensitivity
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.quant.cache import QuantCache
from qradaptor.search.budget import Budget, violation
from qradaptor.search.knapsack import knapsack_genome, solve_mckp, unit_values
from qradaptor.search.space import MemoryTable, SearchSpace

BITS = (2, 3, 4, 5, 6, 8)
RANK = 16


def measured_step(score, genome: np.ndarray, loss: float, costs: np.ndarray, capacity: int) -> np.ndarray:
    """The genome of least summed measured delta within ``capacity``, each unit one choice down,
    the same, or one up from ``genome``; ``score`` measures each single move in its context."""
    units, choices = costs.shape
    delta = np.full((units, 3), 1e9)  # columns: down, stay, up; 1e9 marks a move off the range
    cost = np.full((units, 3), capacity + 1, dtype=np.int64)
    for u in range(units):
        delta[u, 1], cost[u, 1] = 0.0, costs[u, genome[u, 0]]
        for column, step in ((0, -1), (2, 1)):
            b = genome[u, 0] + step
            if 0 <= b < choices:
                moved = genome.copy()
                moved[u, 0] = b
                delta[u, column], cost[u, column] = score(moved) - loss, costs[u, b]
        print(
            f"#   block {u}: {BITS[genome[u, 0]]} bits, down {delta[u, 0]:+.4f} up {delta[u, 2]:+.4f}",
            flush=True,
        )
    pick = solve_mckp(cost, delta, capacity)
    assert pick is not None, "staying put fits"
    out = genome.copy()
    out[:, 0] += pick - 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4.0, help="average stored bits")
    parser.add_argument("--sensitivity", required=True, help="a double-quantised profile of bits 2,3,4,5,6,8")
    parser.add_argument("--windows", type=int, default=4, help="selection batches of 4 x 512 tokens")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--limit", type=int, default=32, help="test windows of 512 tokens per corpus")
    args = parser.parse_args()
    try:
        sensitivity = read_sensitivity(args.sensitivity)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if (tuple(sensitivity.bits), sensitivity.double_quant, sensitivity.granularity) != (BITS, True, "block"):
        raise SystemExit(
            f"--sensitivity: a per-block, double-quantised profile of bits {BITS} is needed (the "
            f"space measured here), got bits {tuple(sensitivity.bits)}, granularity "
            f"{sensitivity.granularity}, double_quant {sensitivity.double_quant}"
        )
    torch.set_num_threads(2)
    start = time.perf_counter()
    loaded = load_model(None, device="cpu", dtype=torch.float32)
    structure = inspect_model(loaded.model)
    space = SearchSpace.for_structure(structure, "block", bits=BITS, ranks=(RANK,))
    plan_kwargs = {"double_quant": True, "model_signature": structure.signature}
    table = MemoryTable.build(structure, space, **plan_kwargs)
    budget = Budget("avg_bits", args.budget)
    cache = QuantCache()  # shared with the test-text scores below
    evaluator = selection_evaluator(loaded, args.windows * BATCH, cache)

    def score(genome: np.ndarray) -> float:
        return evaluator(space.to_plan(genome, **plan_kwargs)).loss

    costs = np.rint(table.unit_bit_weights).astype(np.int64)  # (L, K) stored bits, as the knapsack
    capacity = int(np.floor(budget.value * table.linear_numel + 1e-6))
    knapsack = knapsack_genome(table, unit_values(space, sensitivity), budget, rank=RANK)
    rows = [("knapsack", knapsack, score(knapsack))]
    for iteration in range(args.iterations):
        name, genome, loss = rows[-1]
        moved = measured_step(score, genome, loss, costs, capacity)
        assert violation(moved, budget, table) == 0
        rows.append((f"step {iteration + 1}", moved, score(moved)))
        print(f"# {rows[-1][0]}: selection loss {rows[-1][2]:.4f} (from {loss:.4f})", flush=True)
        if rows[-1][2] >= loss:
            break
    best = min(rows, key=lambda r: r[2])
    print(
        f"\nbudget {args.budget} bits; {platform.machine()}, torch {torch.__version__}, "
        f"{evaluator.evaluations} plans scored forward only, {time.perf_counter() - start:.0f} s\n"
    )
    print("| plan | bits, block 0 to 29 | selection loss | ppl_wiki (test) | ppl_lambada |")
    print("|---|---|---:|---:|---:|")
    for name, genome, loss in rows:
        scored = name in ("knapsack", best[0])
        ppl = (
            quantised_ppl(loaded, cache, space.to_plan(genome, **plan_kwargs), limit=args.limit, seq_len=512)
            if scored
            else {}
        )
        bits = "".join(str(BITS[i]) for i in genome[:, 0])
        wiki, lambada = (f"{ppl['ppl_wiki']:.2f}", f"{ppl['ppl_lambada']:.2f}") if ppl else ("", "")
        print(f"| {name} | {bits} | {loss:.4f} | {wiki} | {lambada} |", flush=True)


if __name__ == "__main__":
    main()
