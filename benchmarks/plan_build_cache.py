"""Building candidate plans with and without the quantisation cache, side by side.

A search builds every candidate from the same base: without the cache each build fits all
block linears again (HQQ: an iterative fit); with it each (linear, bits) is fitted once and
later builds only unpack codes. This fills the cache
as profiling does (every linear at every bit-width), then times
`apply_plan(deepcopy(base), plan, simulated=True)` for the same random plans without the
cache and with it, in one process.

    python benchmarks/plan_build_cache.py --plans 4 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2)")
    parser.add_argument("--plans", type=int, default=4)
    parser.add_argument("--bits", default="2,3,4,8")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--method", default="hqq")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from qradaptor.build import apply_plan
    from qradaptor.models.loading import load_model
    from qradaptor.models.structure import inspect_model
    from qradaptor.plan import Plan
    from qradaptor.quant.cache import QuantCache

    base = load_model(args.model, device=args.device).model
    blocks = inspect_model(base).num_blocks
    choices = [int(b) for b in args.bits.split(",")]
    rng = np.random.default_rng(args.seed)
    plans = [
        Plan.from_lists(rng.choice(choices, blocks).tolist(), [args.rank] * blocks, quant_method=args.method)
        for _ in range(args.plans)
    ]

    def build(plan: Plan, cache: QuantCache | None) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model = apply_plan(copy.deepcopy(base), plan, simulated=True, cache=cache)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        del model
        return seconds

    cache = QuantCache()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    threads = torch.get_num_threads()
    print(f"# {time.strftime('%Y-%m-%d')} {device}, torch {torch.__version__}, {threads} threads")
    print(f"# {blocks} blocks, bits {choices}, method {args.method}, rank {args.rank}, simulated builds")
    # What profiling does in a search: every linear at every candidate bit-width, fitted once.
    start = time.perf_counter()
    for bits in choices:
        build(Plan.uniform(blocks, bits, args.rank, quant_method=args.method), cache)
    print(
        f"# filling the cache (one uniform build per bit-width, as profiling fits): "
        f"{time.perf_counter() - start:.1f} s, {cache.misses} fits"
    )
    print("| plan | avg bits | s, no cache | s, warm cache | new fits | cached fits | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = [0.0, 0.0]
    for i, plan in enumerate(plans):
        without = build(plan, None)
        misses, hits = cache.misses, cache.hits
        with_cache = build(plan, cache)
        totals[0] += without
        totals[1] += with_cache
        avg = sum(plan.block_bits()) / blocks
        print(
            f"| {i} | {avg:.2f} | {without:.2f} | {with_cache:.2f} | {cache.misses - misses} | "
            f"{cache.hits - hits} | {without / with_cache:.1f}x |"
        )
    print(
        f"| all | | {totals[0]:.2f} | {totals[1]:.2f} | {cache.misses} | {cache.hits} | "
        f"{totals[0] / totals[1]:.1f}x |"
    )
    print(f"# cache: {len(cache)} fits, {cache.nbytes / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
