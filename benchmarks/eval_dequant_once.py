"""`qra eval`'s two ways with a packed plan, side by side: dequantise every weight in each forward
(packed, what a capped evaluation does) against once for the run (`quant.modules.dequantised_once`,
the default when the dense weights fit). Same model, same tasks, alternating order after a
warm-up; prints one row per run and checks the scores are the same to the bit.

    python benchmarks/eval_dequant_once.py                                  # GPU, suite, 300 docs
    python benchmarks/eval_dequant_once.py --device cpu --tasks arc_easy --limit 40 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch

from qradaptor.assemble import assemble
from qradaptor.eval.suite import run_suite
from qradaptor.plan import Plan
from qradaptor.quant.modules import dense_bytes, dequantised_once
from qradaptor.recipes.inputs import load_structure

MODES = ("packed", "once")


def score(built, tasks: list[str], limit: int, batch_size: int, mode: str) -> tuple[float, dict]:
    """Seconds and {(task, metric): value} of one evaluation in ``mode``."""
    held = dequantised_once(built.model) if mode == "once" else contextlib.nullcontext(0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    with held:
        records = run_suite(
            built.model, built.tokenizer, tasks, model_name=built.source,
            plan_hash=built.plan.plan_hash, limit=limit, batch_size=batch_size, progress=False,
        )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, {(r.task, r.metric): r.value for r in records}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --device and --plan: the model an eval benchmark scores (``uniform_model``;
    eval_prefix.py takes them from here)."""
    parser.add_argument("--model", default=None, help="omitted: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plan", default="4:16", help="uniform BITS:RANK (default 4:16)")


def require_counts(parser: argparse.ArgumentParser, args: argparse.Namespace, *options: str) -> None:
    """One argparse error, before the model loads, when a count option is below 1."""
    values = {o: getattr(args, o.lstrip("-").replace("-", "_")) for o in options}
    if min(values.values()) < 1:
        names = ", ".join(values)
        got = ", ".join(str(v) for v in values.values())
        parser.error(f"{names} must each be at least 1, got {got}")


def uniform_model(args: argparse.Namespace) -> tuple[Any, str]:
    """The uniform plan ``--plan`` on ``--model``, built on ``--device`` (bf16 on CUDA, fp32 on
    the CPU), and a line naming the device, dtype, torch and plan."""
    bits, rank = (int(v) for v in args.plan.split(":"))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    plan = Plan.uniform(load_structure(args.model)[1].num_blocks, bits, rank)  # from the config
    built = assemble(args.model, plan, dtype=dtype, device=args.device)
    return built, f"device {name}, {dtype}, torch {torch.__version__}, plan uniform {bits}-bit rank {rank}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--tasks", default="suite")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating")
    args = parser.parse_args()
    require_counts(parser, args, "--limit", "--batch-size", "--repeats")
    built, described = uniform_model(args)
    tasks = [args.tasks]
    print(
        f"{described}, tasks {args.tasks}, limit {args.limit}, batch {args.batch_size}, "
        f"dense weights held by 'once': {dense_bytes(built.model) / 2**20:,.0f} MiB"
    )
    score(built, tasks, 2, args.batch_size, "packed")  # warm-up: kernels, caches, tokeniser
    print("| run | mode | seconds |")
    print("|---:|---|---:|")
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    values: dict[str, dict] = {}
    for run in range(args.repeats):
        for mode in MODES if run % 2 == 0 else MODES[::-1]:
            took, values[mode] = score(built, tasks, args.limit, args.batch_size, mode)
            seconds[mode].append(took)
            print(f"| {run} | {mode} | {took:.1f} |", flush=True)
    same = values["packed"] == values["once"]
    packed, once = (sum(seconds[m]) / len(seconds[m]) for m in MODES)
    print(f"mean packed {packed:.1f} s, once {once:.1f} s: {packed / once:.2f}x; scores identical: {same}")
    if not same:
        packed_values, once_values = values["packed"], values["once"]
        diff = {k: (v, once_values.get(k)) for k, v in packed_values.items() if v != once_values.get(k)}
        print(f"differences: {diff}")


if __name__ == "__main__":
    main()
