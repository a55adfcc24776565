"""Is a plan's margin over another on the screen larger than the selection text's own spread?

The screen (rung 0) ranks plans by their mean held-out loss on the selection text. Two plans that
differ in a block or two differ by thousandths of a nat, and the windows of the text disagree
about them by as much. This scores each plan window by window (``ProxyEvaluator.window_losses``:
forward only, adapters untrained, the terms whose mean is the screen's loss) and gives, for each
plan against the first, the paired difference's mean and standard error over the windows
(``screen_choice.paired_margin``, the search's own rule). The model is the embedded
SmolLM2-135M-Instruct in fp32 (its "16-bit" is the Q4_1 GGUF dequantised).

    python benchmarks/screen_margin.py --windows 64 knapsack=k/plan.json picked=s/plan.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from selection_loss import named_plans, selection_evaluator

from qradaptor.models.loading import load_model
from qradaptor.quant.cache import QuantCache
from qradaptor.search.screen_choice import paired_margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", nargs="+", metavar="NAME=PLAN.json", help="the first is the reference")
    parser.add_argument("--windows", type=int, default=64, help="selection windows of 512 tokens (<= 64)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.windows < 2:
        raise SystemExit(f"--windows must be at least 2 (a standard error needs two), got {args.windows}")
    named = named_plans(args.plans)
    if len(named) < 2:
        raise SystemExit("give at least two plans: the reference first, then those to compare with it")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(None, device="cpu", dtype=torch.float32)
    evaluator = selection_evaluator(loaded, args.windows, QuantCache())  # the screen's scorer
    losses = {name: evaluator.window_losses(plan) for name, plan in named}
    reference = named[0][0]
    print(
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.windows} x 512 tokens of embedded:wiki-selection; {time.perf_counter() - start:.0f} s\n"
    )
    print(f"| plan | plan hash | screen loss | minus {reference}'s | standard error | in errors |")
    print("|---|---|---:|---:|---:|---:|")
    for name, plan in named:
        mean = statistics.fmean(losses[name])
        if name == reference:
            print(f"| {name} | {plan.plan_hash} | {mean:.5f} | | | |")
            continue
        margin = paired_margin(losses[name], losses[reference])
        diff, se = margin.mean, margin.stderr
        errors = f"{diff / se:+.1f}" if se > 0 else "–"  # the same plan twice: every window equal
        print(f"| {name} | {plan.plan_hash} | {mean:.5f} | {diff:+.5f} | {se:.5f} | {errors} |")


if __name__ == "__main__":
    main()
