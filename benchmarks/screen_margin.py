"""Is a plan's margin over another on the screen larger than the selection text's own spread?

The screen (rung 0) ranks plans by their mean held-out loss on the selection text. Two plans that
differ in a block or two differ by thousandths of a nat, and the windows of the text disagree
about them by as much. This scores each plan window by window (forward only, adapters untrained,
as ``ProxyEvaluator`` with 0 steps scores it: the mean of the windows is the screen's loss) and
gives, for each plan against the first, the paired difference's mean and standard error over the
windows. The model is the embedded SmolLM2-135M-Instruct in fp32 (its "16-bit" is the Q4_1 GGUF
dequantised).

    python benchmarks/screen_margin.py --windows 64 knapsack=k/plan.json picked=s/plan.json
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time

import torch
from selection_loss import BATCH, named_plans, selection_windows

from qradaptor.build import apply_plan
from qradaptor.data.search_texts import search_texts
from qradaptor.models.loading import load_model
from qradaptor.quant.cache import QuantCache


@torch.inference_mode()
def window_losses(model: torch.nn.Module, ids: torch.Tensor) -> list[float]:
    """Mean next-token loss of each row of ``ids`` (every row has the same number of targets)."""
    out: list[float] = []
    for batch in ids.split(BATCH):  # (b, T)
        logits = model(input_ids=batch).logits[:, :-1].float()  # (b, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        out += nll.mean(dim=1).tolist()  # (b,)
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a and its standard error over the windows."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


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
    texts = search_texts("embedded:wiki-calibration", "embedded:wiki-selection")
    ids = selection_windows(loaded, texts.selection, args.windows)
    cache = QuantCache()
    losses = {}
    for name, plan in named:
        model = apply_plan(copy.deepcopy(loaded.model), plan, simulated=True, cache=cache)
        losses[name] = window_losses(model, ids)
        del model
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
        diff, se = paired(losses[reference], losses[name])
        errors = f"{diff / se:+.1f}" if se > 0 else "–"  # the same plan twice: every window equal
        print(f"| {name} | {plan.plan_hash} | {mean:.5f} | {diff:+.5f} | {se:.5f} | {errors} |")


if __name__ == "__main__":
    main()
