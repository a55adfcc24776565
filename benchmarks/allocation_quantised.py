"""Plans at equal memory before any fine-tune: held-out perplexity of the quantised model.

Each plan (a plan JSON, e.g. a search's plan.json or ``qra plan --baseline knapsack -o``, or
uniform:BITS:RANK) quantises the embedded SmolLM2-135M-Instruct (its "16-bit" is the Q4_1
GGUF dequantised), adapters untrained (LoRA B = 0, so they change nothing), and is scored by
``qra eval``'s perplexity on ppl_wiki (held-out BoolQ passages) and ppl_lambada. Every plan
shares one fitted-weights cache, so each (linear, bits) is fitted once. Prints a table.

    python benchmarks/allocation_quantised.py knapsack=k.json searched=run/plan.json uniform-3=uniform:3:16

``--space DIR`` measures the richer space instead (docs/ALLOCATION.md): it profiles KL tables
(bits 2,3,4,5,6,8, ``--profile-windows`` x 256 tokens of the calibration text, at each of
``--group-sizes`` and, with ``--double-quant``, double-quantised), keeping each in DIR so a
re-run reuses it, then scores the knapsack plan of each space at each of ``--budgets``:

    python benchmarks/allocation_quantised.py --space /tmp/space --budgets 4.0,4.5 --limit 32
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from qradaptor.atomic import write_text
from qradaptor.build import apply_plan
from qradaptor.cli.common import read_plan
from qradaptor.eval.suite import run_suite
from qradaptor.memory import plan_memory
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.cache import QuantCache

SPACE_BITS = (2, 3, 4, 5, 6, 8)
"""Bit-widths of the richer space's profiles."""


def quantised_ppl(loaded, cache: QuantCache, made: Plan, *, limit: int, seq_len: int) -> dict[str, float]:
    """ppl_wiki and ppl_lambada of ``made`` built on a copy of the loaded model (simulated, its
    fits from the shared ``cache``, adapters untrained), as ``qra eval`` scores them."""
    model = apply_plan(copy.deepcopy(loaded.model), made, simulated=True, cache=cache).eval()
    records = run_suite(
        model,
        loaded.tokenizer,
        ["ppl_wiki", "ppl_lambada"],
        model_name="embedded",
        plan_hash=made.plan_hash,
        limit=limit,
        seq_len=seq_len,
        progress=False,
    )
    return {r.task: r.value for r in records}


def _score(loaded, structure, cache, label: str, made: Plan, args: argparse.Namespace) -> None:
    """Builds ``made`` (simulated, from the shared cache), prints its row."""
    start = time.perf_counter()
    ppl = quantised_ppl(loaded, cache, made, limit=args.limit, seq_len=args.seq_len)
    report = plan_memory(structure, made)
    per_block = made.granularity == "block"  # a module plan (a search's per module) has no row of block bits
    bits = "".join(str(b) if b < 10 else "F" for b in made.block_bits()) if per_block else "(per module)"
    groups = "".join("L" if made.group_size_of(s) > made.group_size else "." for s in made.layers.values())
    print(
        f"{label:<30} {report.avg_bits:>8.3f} {report.total_bytes / 2**20:>8.1f} {ppl['ppl_wiki']:>9.2f} "
        f"{ppl['ppl_lambada']:>11.2f} {bits:<31} {groups:<31} {time.perf_counter() - start:>6.0f}",
        flush=True,
    )


def _table(loaded, folder: Path, group_size: int, double_quant: bool, args: argparse.Namespace, cache):
    """The KL table at ``group_size``, read from ``folder`` or profiled (and written) there."""
    from qradaptor.data import load_texts, pack_texts
    from qradaptor.sensitivity import profile_sensitivity
    from qradaptor.sensitivity_table import SensitivityTable

    path = folder / f"sensitivity-g{group_size}{'-dq' if double_quant else ''}.json"
    if path.exists():
        return SensitivityTable.from_dict(json.loads(path.read_text()))
    if double_quant and args.dq_from_plain:
        # The approximation --dq-from-plain states: 8-bit metadata moves a block's KL too little
        # to change the choice, so the float16-metadata profile stands in for it.
        return dataclasses.replace(_table(loaded, folder, group_size, False, args, cache), double_quant=True)
    calibration = pack_texts(
        load_texts(None), loaded.tokenizer, 256, num_sequences=args.profile_windows, seed=0
    )
    start = time.perf_counter()
    table = profile_sensitivity(
        loaded.model,
        calibration,
        bits=SPACE_BITS,
        group_size=group_size,
        double_quant=double_quant,
        progress=False,
        cache=cache,
    )
    print(f"# profiled {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    write_text(path, json.dumps(table.to_dict()))
    return table


def _space_study(loaded, structure, cache, args: argparse.Namespace) -> None:
    from qradaptor.search.budget import parse_budget
    from qradaptor.search.knapsack import knapsack_plan

    folder = Path(args.space)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [int(g) for g in args.group_sizes.split(",")]
    base = sizes[0]
    seen: set[str] = set()
    variants: list[tuple[str, bool, list[int], tuple[int, ...]]] = [
        (f"2,3,4,8 g{base}", False, [base], (2, 3, 4, 8)),
        (f"2-6,8 g{base}", False, [base], SPACE_BITS),
    ]
    for g in sizes[1:]:
        variants.append((f"2-6,8 g{g} (plan-wide)", False, [g], SPACE_BITS))
    if len(sizes) > 1:
        variants.append((f"2-6,8 x g{{{args.group_sizes}}}", False, sizes, SPACE_BITS))
    if args.double_quant:
        variants.append((f"2-6,8 g{base} dq", True, [base], SPACE_BITS))
        if len(sizes) > 1:
            variants.append((f"2-6,8 x g{{{args.group_sizes}}} dq", True, sizes, SPACE_BITS))
    budgets = [float(b) for b in args.budgets.split(",")]
    variants = [v for v in variants if args.only is None or args.only in v[0]]
    if args.double_quant and (args.only is None or args.only in "uniform 4 dq"):
        # What 8-bit metadata costs by itself: uniform 4-bit with less metadata.
        made = Plan.uniform(structure.num_blocks, 4, 16, group_size=base, double_quant=True)
        _score(loaded, structure, cache, f"uniform 4 g{base} dq", made, args)
    for label, dq, groups, bits in variants:
        tables = [_table(loaded, folder, g, dq, args, cache) for g in groups]
        for budget in budgets:
            made = knapsack_plan(
                structure,
                tables if len(tables) > 1 else tables[0],
                parse_budget(f"{budget}bits"),
                bits=bits,
                group_size=groups[0],
                double_quant=dq,
            )
            if made.plan_hash in seen:
                print(f"{label + f' @{budget}':<30} (the plan of a row above)", flush=True)
                continue
            seen.add(made.plan_hash)
            write_text(folder / f"plan-{label.replace(' ', '_')}-{budget}.json", made.to_json())
            _score(loaded, structure, cache, f"{label} @{budget}", made, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "plans", nargs="*", metavar="LABEL=PLAN", help="a plan JSON file or uniform:BITS:RANK"
    )
    parser.add_argument("--limit", type=int, default=32, help="perplexity windows per corpus")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--space", metavar="DIR", help="measure the richer space; KL tables kept in DIR")
    parser.add_argument("--budgets", default="4.0,4.5", help="--space: avg-bits budgets")
    parser.add_argument("--group-sizes", default="64,192", help="--space: group sizes, the plan's first")
    parser.add_argument("--double-quant", action="store_true", help="--space: add double-quantised rows")
    parser.add_argument(
        "--dq-from-plain",
        action="store_true",
        help="--space: choose double-quantised plans with the float16-metadata profiles (no extra profile)",
    )
    parser.add_argument("--only", metavar="TEXT", help="--space: only the spaces whose label contains TEXT")
    parser.add_argument("--profile-windows", type=int, default=1, help="--space: 256-token profile windows")
    args = parser.parse_args()
    if not args.plans and not args.space:
        parser.error("give plans to score, or --space DIR")
    torch.set_num_threads(args.threads)
    loaded = load_model(None, dtype=torch.float32, device="cpu")
    structure = inspect_model(loaded.model)
    cache = QuantCache()
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads; ", end="")
    print(f"{args.limit} x {args.seq_len} tokens per corpus")
    header = f"{'plan':<30} {'avg bits':>8} {'MiB':>8} {'ppl_wiki':>9} {'ppl_lambada':>11}"
    print(f"{header} {'bits by block':<31} {'larger group':<31} {'s':>6}", flush=True)
    for item in args.plans:
        label, _, spec = item.partition("=")
        made = read_plan(spec)
        if isinstance(made, tuple):  # uniform:BITS:RANK
            made = Plan.uniform(structure.num_blocks, made[0], made[1])
        _score(loaded, structure, cache, label, made, args)
    if args.space:
        _space_study(loaded, structure, cache, args)


if __name__ == "__main__":
    main()
