"""Module against block granularity for the knapsack, quantised only, at equal stored bits.

Two steps, each its own process (run one, then the other):

``profile DIR``: on the embedded SmolLM2-135M-Instruct, the KL tables of bits 2,3,4,5,6,8 (HQQ,
group 64) per block and per module, on the same calibration windows (``--windows`` x
``--seq-len`` tokens of the embedded calibration passages, seed 0, as the richer-space study of
docs/ALLOCATION.md profiles), timed side by side in one process: first every (linear, bits) fit
(a fresh ``QuantCache``: what either profile pays once), then the block profile's forwards, then
the module profile's (both reading the cache, so each is its forwards alone). Writes
DIR/block.json, DIR/module.json and DIR/timing.json.

``score DIR``: the knapsack plan of each table at each ``--budgets`` (rank 16; with
``--double-quant`` also plans with 8-bit scales and zeros, chosen on the same float16-metadata
tables as the richer-space study's ``--dq-from-plain`` rows) and the ``--uniform`` plans,
scored as ``allocation_quantised.py`` scores them (``qra eval``'s ppl_wiki and ppl_lambada,
``--limit`` windows x 512 tokens, adapters untrained). Prints a markdown table; each plan is
written to DIR.

    python benchmarks/allocation_modules.py profile /tmp/gran
    python benchmarks/allocation_modules.py score /tmp/gran --budgets 4.0,4.25,4.5 --double-quant
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from qradaptor.atomic import write_text
from qradaptor.build import _dense_weight
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.quant.cache import QuantCache

BITS = (2, 3, 4, 5, 6, 8)
"""The richer space's bit-widths (docs/ALLOCATION.md, "A richer space")."""
GROUP_SIZE = 64


def _profile(args: argparse.Namespace) -> None:
    from qradaptor.data import load_texts, pack_texts
    from qradaptor.sensitivity import profile_sensitivity

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_model(None, dtype=torch.float32, device="cpu")
    model, structure = loaded.model, inspect_model(loaded.model)
    calibration = pack_texts(
        load_texts(None), loaded.tokenizer, args.seq_len, num_sequences=args.windows, seed=0
    )  # (N, T)
    cache = QuantCache()
    start = time.perf_counter()
    with torch.inference_mode():
        for block in range(structure.num_blocks):
            for info in structure.linears:
                path = structure.module_path(block, info.name)
                weight = _dense_weight(model.get_submodule(path), info)
                for b in BITS:
                    cache.get(path, weight, b, GROUP_SIZE, "hqq")
    timing = {"fits_s": time.perf_counter() - start}
    print(f"# fits of {len(cache)} (linear, bits): {timing['fits_s']:.0f} s", flush=True)
    for granularity in ("block", "module"):
        start = time.perf_counter()
        table = profile_sensitivity(
            model, calibration, bits=BITS, group_size=GROUP_SIZE, cache=cache, granularity=granularity
        )
        timing[f"{granularity}_forwards_s"] = time.perf_counter() - start
        timing[f"{granularity}_rows"] = table.num_units * len(BITS)
        print(f"# {granularity} profile forwards: {timing[f'{granularity}_forwards_s']:.0f} s", flush=True)
        write_text(folder / f"{granularity}.json", json.dumps(table.to_dict()))
    timing.update(
        machine=platform.machine(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        windows=args.windows,
        seq_len=args.seq_len,
        cache_misses=cache.misses,
    )
    write_text(folder / "timing.json", json.dumps(timing, indent=2))
    print(json.dumps(timing, indent=2))


def _summed_kl(made, structure, table) -> float:
    """The knapsack's objective of ``made`` under ``table``: the KL of each unit at its bits
    (0 at 16); nan for a module plan under a block table (its blocks mix bits)."""
    total = 0.0
    for block in range(structure.num_blocks):
        for m, name in enumerate(structure.linear_names):
            bits = made.spec_for(block, name).bits
            if table.modules:
                row = table.kl[block * len(table.modules) + m]
            elif len({made.spec_for(block, n).bits for n in structure.linear_names}) > 1:
                return float("nan")
            elif m:
                continue  # a block row counts once
            else:
                row = table.kl[block]
            total += 0.0 if bits == 16 else row[table.bits.index(bits)]
    return total


def _score(args: argparse.Namespace) -> None:
    # Run as a script, this folder is on sys.path: the plans are scored as allocation_quantised's.
    from allocation_quantised import quantised_ppl

    from qradaptor.memory import plan_memory
    from qradaptor.plan import Plan
    from qradaptor.search.budget import parse_budget
    from qradaptor.search.knapsack import knapsack_plan
    from qradaptor.sensitivity_table import SensitivityTable

    folder = Path(args.dir)
    tables = {
        g: SensitivityTable.from_dict(json.loads((folder / f"{g}.json").read_text()))
        for g in ("block", "module")
    }
    loaded = load_model(None, dtype=torch.float32, device="cpu")
    structure = inspect_model(loaded.model)
    cache = QuantCache()
    plans: list[tuple[str, Plan]] = []
    for dq in (False, True) if args.double_quant else (False,):
        for budget in (float(b) for b in args.budgets.split(",")):
            if dq and budget not in (4.0, 4.5):
                continue
            for granularity, table in tables.items():
                made = knapsack_plan(
                    structure,
                    # --dq-from-plain's approximation: the float16-metadata table chooses.
                    dataclasses.replace(table, double_quant=True) if dq else table,
                    parse_budget(f"{budget}bits"),
                    granularity=granularity,
                    group_size=GROUP_SIZE,
                    double_quant=dq,
                )
                plans.append((f"{granularity}{' dq' if dq else ''} @{budget}", made))
    for bits in (int(b) for b in args.uniform.split(",") if b):
        plans.append((f"uniform {bits}", Plan.uniform(structure.num_blocks, bits, 16, group_size=GROUP_SIZE)))
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; ", end="")
    print(f"{args.limit} x 512 tokens per corpus")
    names = [n.rsplit(".", 1)[-1].removesuffix("_proj") for n in structure.linear_names]
    print(
        "| plan | avg bits | MiB | ppl_wiki | ppl_lambada | KL block table | KL module table | "
        f"mean bits of {'/'.join(names)} | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    # --only TEXT,TEXT: the plans whose label has a TEXT, in that order; else all in order.
    wanted = args.only.split(",") if args.only else [label for label, _ in plans]
    picked = [(label, made) for w in wanted for label, made in plans if w in label]
    seen: set[str] = set()
    for label, made in picked:
        if label in seen:
            continue
        seen.add(label)
        start = time.perf_counter()
        write_text(folder / f"plan-{label.replace(' ', '_').replace('@', '')}.json", made.to_json())
        ppl = quantised_ppl(loaded, cache, made, limit=args.limit, seq_len=512)
        report = plan_memory(structure, made)
        kl = [_summed_kl(made, structure, t) for t in tables.values()]
        means = [
            sum(made.spec_for(b, n).bits for b in range(structure.num_blocks)) / structure.num_blocks
            for n in structure.linear_names
        ]
        print(
            f"| {label} | {report.avg_bits:.3f} | {report.total_bytes / 2**20:.1f} | {ppl['ppl_wiki']:.2f} "
            f"| {ppl['ppl_lambada']:.2f} | {kl[0]:.4f} | {kl[1]:.4f} | "
            f"{' / '.join(f'{m:.2f}' for m in means)} | {time.perf_counter() - start:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("profile", "score"))
    parser.add_argument("dir", help="where the tables, timings and plans are kept")
    parser.add_argument("--windows", type=int, default=1, help="profile: calibration windows")
    parser.add_argument("--seq-len", type=int, default=256, help="profile: tokens per window")
    parser.add_argument("--budgets", default="4.0,4.25,4.5", help="score: avg-bits budgets")
    parser.add_argument("--double-quant", action="store_true", help="score: 8-bit metadata at 4.0, 4.5")
    parser.add_argument("--uniform", default="3,4", help="score: uniform plans' bits (rank 16)")
    parser.add_argument("--limit", type=int, default=32, help="score: perplexity windows per corpus")
    parser.add_argument(
        "--only", metavar="TEXT[,TEXT]", help="score: only the plans whose label has a TEXT, in that order"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _profile(args) if args.step == "profile" else _score(args)


if __name__ == "__main__":
    main()
