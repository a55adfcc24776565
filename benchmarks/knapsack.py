"""The exact allocator's cost: solve time of the multiple-choice knapsack at real sizes.

Prices SmolLM2-135M's block linears (30 blocks x 7 linears; the shapes come from the
model's config, no weights loaded) at several bit choices and budgets, with the KL table of
a landed search (docs/results/paper/searches/4.0bits-s0-*/sensitivity.json) where the bits
match, and synthetic KLs (4x less per extra bit) for module units and bit-widths it lacks.
Prints one row per problem: units, choices, states on the last frontier, and milliseconds;
"module, tied" ties vLLM's fused groups (q/k/v, gate/up) into one item each. Then the whole
``knapsack_plan`` at module granularity (memory table, knapsack and plan) from a synthetic
per-module table, under an avg-bits and a byte budget; and the knapsack that chooses ranks too
(``--rank-benefit``), per block and per module, under byte budgets.

    python benchmarks/knapsack.py
"""

from __future__ import annotations

import glob
import platform
import time
from pathlib import Path

import numpy as np

from qradaptor.cli.common import load_structure, read_sensitivity
from qradaptor.export.vllm_constraints import fused_groups
from qradaptor.search.budget import parse_budget
from qradaptor.search.knapsack import knapsack_genome, knapsack_plan, tie_items, unit_values
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.sensitivity_table import SensitivityTable

ROOT = Path(__file__).parents[1]


def main() -> None:
    structure = load_structure(None)[1]
    # The first per-block table of bits {2,3,4,8} with 16-bit metadata (the searches' folders
    # also hold per-module and double-quantised ones).
    for profile in sorted(glob.glob(str(ROOT / "docs/results/paper/searches/4.0bits-s0-*/sensitivity.json"))):
        table_kl = read_sensitivity(profile, structure.signature)
        if table_kl.granularity == "block" and table_kl.bits == (2, 3, 4, 8) and not table_kl.double_quant:
            break
    else:
        raise SystemExit("no per-block 4.0bits-s0 profile of bits 2,3,4,8 under docs/results/paper/searches")
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}; KL table {profile}")
    print(
        f"{'units':>6} {'bits':>14} {'budget':>9} {'ms':>8} {'avg bits':>9} {'sum KL':>9} "
        f"{'uniform-4 KL':>13}"
    )
    for granularity, bits in (
        ("block", (2, 3, 4, 8)),
        ("block", (2, 3, 4, 5, 6, 8, 16)),
        ("module", (2, 3, 4, 5, 6, 8)),
        ("module", (2, 3, 4, 5, 6, 8, 16)),
        ("module, tied", (4, 8, 16)),
    ):
        tied = fused_groups(structure) if granularity.endswith("tied") else ()
        granularity = granularity.split(",")[0]
        space = SearchSpace.for_structure(structure, granularity, bits=bits, ranks=(16,))
        table = MemoryTable.build(structure, space, group_size=64)
        if granularity == "block" and set(bits) - {16} <= set(table_kl.bits):
            values = unit_values(space, table_kl)
        else:  # synthetic: a lognormal scale per unit, 4x less KL per extra bit, 0 at 16
            scale = np.random.default_rng(0).lognormal(0, 1, space.num_units)[:, None]
            values = np.where(np.array(bits) == 16, 0.0, scale * 4.0 ** -(np.array(bits) - 2.0))
        for text in ("3.5bits", "4.0bits", "4.5bits", "5.5bits") if not tied else ("4.5bits", "6.0bits"):
            budget = parse_budget(text)
            start = time.perf_counter()
            genome = knapsack_genome(table, values, budget, rank=16, items=tie_items(space, tied))
            ms = 1000 * (time.perf_counter() - start)
            rows = np.arange(space.num_units)
            uniform = values[:, bits.index(4)].sum()
            print(
                f"{space.num_units:>6} {','.join(map(str, bits)):>14} {text:>9} {ms:>8.1f} "
                f"{float(table.avg_bits_of(genome)):>9.3f} {values[rows, genome[:, 0]].sum():>9.4f} "
                f"{uniform:>13.4f}"
            )
    # The whole library call at module granularity, every bit choice, pricing included.
    bits = (2, 3, 4, 5, 6, 8)
    rows = structure.num_blocks * len(structure.linear_names)
    scale = np.random.default_rng(1).lognormal(0, 1, rows)
    sens = SensitivityTable(
        bits=bits,
        kl=tuple(tuple(float(s * 4.0 ** -(b - 2.0)) for b in bits) for s in scale),
        tokens=256,
        group_size=64,
        quant_method="hqq",
        granularity="module",
        modules=structure.linear_names,
    )
    for text in ("4.0bits", "4.5bits", "110MB"):
        start = time.perf_counter()
        knapsack_plan(structure, sens, parse_budget(text), bits=(*bits, 16), granularity="module", rank=16)
        ms = 1000 * (time.perf_counter() - start)
        print(f"knapsack_plan, {rows} modules x {len(bits) + 1} bits, {text}: {ms:.0f} ms")
    # Ranks chosen too (--rank-benefit): every unit's bits x ranks {4, 8, 16} under byte budgets,
    # with a benefit that makes larger ranks worth something, so no rank wins outright.
    benefit = {4: 0.0, 8: 0.01, 16: 0.02}
    for granularity, profile_table, choices in (
        ("block", table_kl, (*table_kl.bits, 16)),
        ("module", sens, (*bits, 16)),
    ):
        for text in ("110MB", "120MB", "130MB"):
            start = time.perf_counter()
            plan = knapsack_plan(
                structure,
                profile_table,
                parse_budget(text),
                bits=choices,
                granularity=granularity,
                rank_benefit=benefit,
                group_size=table_kl.group_size,
            )
            ms = 1000 * (time.perf_counter() - start)
            ranks = sorted({spec.rank for spec in plan.layers.values()})
            print(
                f"knapsack_plan --rank-benefit, {len(plan.layers)} {granularity}s x {len(choices)} bits x 3 "
                f"ranks, {text}: {ms:.0f} ms (ranks used {ranks})"
            )


if __name__ == "__main__":
    main()
