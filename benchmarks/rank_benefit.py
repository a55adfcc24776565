"""What a LoRA rank is worth after the search's proxy fine-tune: one plan at each rank, embedded SmolLM2.

The KL table cannot price rank (an adapter starts at zero, so rank changes nothing before
fine-tuning), so the knapsack's rank choice (``qra plan --baseline knapsack --rank-benefit``)
needs it measured. This keeps a plan's bits, gives every entry each rank in turn, and proxy
fine-tunes each as ``qra search`` does at its full preset: ``--steps`` AdamW steps of 4 x 512
tokens of ``embedded:wiki-calibration`` (lr 2e-4, 2 warm-up steps, cosine), then the held-out
loss on 16 x 512 tokens of ``embedded:wiki-selection``; once per proxy seed (the adapters'
initialisation). Prints a table and the ``--rank-benefit`` value: each rank's mean loss below
the smallest rank's.

    python benchmarks/rank_benefit.py PLAN.json --ranks 4,8,16 --seeds 0,1,2

The embedded model's "16-bit" weights are its Q4_1 GGUF dequantised.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch

from qradaptor.cli.common import parse_int_list, read_plan
from qradaptor.models.loading import load_model
from qradaptor.plan import Plan, check_rank
from qradaptor.quant.cache import QuantCache
from qradaptor.search.knapsack_ranks import benefit_from_losses

WINDOWS = 16
"""Held-out windows of 512 tokens: the full preset's 4 batches of 4."""


def at_rank(plan: Plan, rank: int) -> Plan:
    """``plan`` with every entry at ``rank``, its bits and group sizes kept."""
    layers = {key: dataclasses.replace(spec, rank=rank) for key, spec in plan.layers.items()}
    return dataclasses.replace(plan, layers=layers, name=f"{plan.name or 'plan'}-r{rank}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="a plan JSON (qra plan -o, a search's or a cell's plan.json)")
    parser.add_argument("--ranks", default="4,8,16", help="ranks to measure, ascending")
    parser.add_argument("--seeds", default="0,1,2", help="proxy seeds (adapter initialisation)")
    parser.add_argument("--steps", type=int, default=20, help="proxy steps (the search's default 20)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:
        plan = read_plan(args.plan)
        ranks, seeds = parse_int_list(args.ranks, "--ranks"), parse_int_list(args.seeds, "--seeds")
        for rank in ranks:
            check_rank(rank, "--ranks")
        if ranks != sorted(set(ranks)) or len(ranks) < 2:
            raise ValueError(f"--ranks must be two or more ascending ranks, got {args.ranks!r}")
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1 (a rank is worth nothing untrained), got {args.steps}")
    except ValueError as err:
        raise SystemExit(str(err)) from None
    from selection_loss import selection_evaluator  # a neighbour: found when run as a script

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(None, device="cpu", dtype=torch.float32)
    cache = QuantCache()  # one fit per (linear, bits) across seeds and ranks
    losses: dict[int, list[float]] = {rank: [] for rank in ranks}
    for seed in seeds:
        evaluator = selection_evaluator(loaded, WINDOWS, cache, steps=args.steps, seed=seed)
        for rank in ranks:
            score = evaluator(at_rank(plan, rank))
            losses[rank].append(score.loss)
            print(f"# seed {seed} rank {rank}: {score.loss:.4f} ({score.seconds:.0f} s)", flush=True)
    means = {rank: statistics.fmean(values) for rank, values in losses.items()}
    benefit = benefit_from_losses(means)
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, {args.threads} threads; plan {plan.name} "
        f"({plan.plan_hash}); {args.steps} proxy steps; {time.perf_counter() - start:.0f} s\n"
    )
    print("| rank | " + " | ".join(f"seed {s}" for s in seeds) + " | mean loss | benefit (nats) |")
    print("|---:|" + "---:|" * (len(seeds) + 2))
    for rank in ranks:
        cells = " | ".join(f"{loss:.4f}" for loss in losses[rank])
        print(f"| {rank} | {cells} | {means[rank]:.4f} | {benefit[rank]:+.4f} |")
    print("\n--rank-benefit " + ",".join(f"{rank}:{benefit[rank]:.4f}" for rank in ranks))


if __name__ == "__main__":
    main()
