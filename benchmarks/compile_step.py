"""Training-step throughput eager vs compiled (torch.compile, CUDA graphs) through qra train's loop.

For each method (lora16 and qlora-4, our packed 4-bit plan, by default) and each compile mode
(off, default, graphs), trains --steps steps at one fixed batch with ``train_plan`` (what
``qra train --compile MODE`` runs), one run after the other in this process, and reports:

- steady tokens/s: real (non-padding) input tokens per second after the first --skip steps,
  and its ratio to eager for the same method;
- first step: seconds of step 1, where compilation happens (graphs also warms up and records
  its graphs in steps 2 and 3);
- peak: CUDA's max_memory_allocated over the steps;
- graphs / breaks: graphs dynamo compiled and graph breaks it hit (2 and 0 expected: the
  training forward and the held-out forward, each whole);
- the first losses and the final held-out loss, so a reader sees that the modes train alike.

    python benchmarks/compile_step.py --batch-size 8 --seq-len 512 --json b8.json     # GPU
    python benchmarks/compile_step.py --batch-size 32 --seq-len 512 --json b32.json
    python benchmarks/compile_step.py --device cpu --steps 4 --skip 2 --batch-size 2 --seq-len 64

Data: by default (--data text) packed windows of the embedded BoolQ passages, so every batch is
full and eager and compiled steps compute the same shapes. --data qa trains on the QA mix, where a
compiled step pads to the longest example and an eager one only to its batch's longest.
--source takes a file instead (plain texts with --data text, Alpaca examples with --data qa).
On a CPU "graphs" is skipped (CUDA graphs need CUDA). --json is rewritten after every run, so a
run cut off keeps what it did.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

MIB = 2**20


def run_one(method: str, mode: str, args: argparse.Namespace) -> dict:
    """Trains ``method`` for --steps steps with ``compile=mode``; returns the measured row."""
    import torch
    from torch._dynamo.utils import counters

    from qradaptor.train.config import TrainConfig
    from qradaptor.train.run import DataSpec, train_plan

    torch._dynamo.reset()  # each mode compiles from scratch: its first step shows the whole cost
    counters.clear()
    config = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        lora_dropout=args.lora_dropout,
        seed=args.seed,
        compile=mode,
        progress=False,
    )
    data = DataSpec(args.source, text=args.data == "text", limit=args.limit, eval_size=args.eval_size)
    started = time.perf_counter()
    outcome = train_plan(args.model, method, config, data, rank=args.rank, bits=4, device=args.device)
    result = outcome.result
    steady = result.step_seconds[args.skip :]
    row = {
        "method": method,
        "compile": mode,
        "plan_hash": outcome.plan.plan_hash,
        "steps": result.steps,
        "tokens": result.tokens,
        "steady_tokens_per_second": result.steady_tokens_per_second(args.skip),
        "median_step_seconds": statistics.median(steady) if steady else None,
        "first_step_seconds": result.step_seconds[0],
        "warmup_seconds": sum(result.step_seconds[: args.skip]),
        "peak_memory": result.peak_memory,
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "first_losses": result.losses[: args.show_losses],
        "losses": result.losses,
        "final_eval_loss": result.evals[-1][1] if result.evals else None,
        "step_seconds": result.step_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    del outcome, result
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict], last: int = 0) -> str:
    """Markdown table of ``rows`` (only the ``last`` ones when > 0), ratios to eager among all rows."""
    eager = {r["method"]: r["steady_tokens_per_second"] for r in rows if r["compile"] == "off"}
    lines = [
        "| method | compile | steady tokens/s | x eager | first step s | peak MiB | graphs | breaks "
        "| first losses | eval loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows[-last:]:
        base = eager.get(r["method"])
        ratio = f"{r['steady_tokens_per_second'] / base:.2f}" if base else "-"
        peak = f"{r['peak_memory'] / MIB:,.0f}" if r["peak_memory"] else "-"
        losses = ", ".join(f"{x:.4f}" for x in r["first_losses"])
        held = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        lines.append(
            f"| {r['method']} | {r['compile']} | {r['steady_tokens_per_second']:,.0f} | {ratio} | "
            f"{r['first_step_seconds']:.1f} | {peak} | {r['graphs']} | {r['graph_breaks']} | {losses} | "
            f"{held} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2-135M)")
    parser.add_argument("--methods", default="lora16,qlora-4")
    parser.add_argument("--modes", default="off,default,graphs", help="compile modes, eager first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60, help="steps per run (warm-up included)")
    parser.add_argument("--skip", type=int, default=10, help="first steps left out of steady tokens/s")
    parser.add_argument("--data", choices=("text", "qa"), default="text")
    parser.add_argument(
        "--source", help="data file or dataset instead of the embedded one (as qra train --data)"
    )
    parser.add_argument("--limit", type=int, help="documents (text) or examples (qa) to load")
    parser.add_argument("--eval-size", type=int, default=16, help="held out (documents or examples)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-losses", type=int, default=3, help="losses shown per run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write the results here (after every run)")
    args = parser.parse_args(argv)
    if args.skip >= args.steps:
        parser.error(f"--skip must be below --steps={args.steps}, got {args.skip}")

    import torch

    modes = [m for m in args.modes.split(",") if m]
    if not args.device.startswith("cuda") and "graphs" in modes:
        print("graphs skipped: CUDA graphs need a CUDA device", file=sys.stderr)
        modes.remove("graphs")
    on_cuda = args.device.startswith("cuda")
    meta = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if on_cuda else platform.processor() or "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "args": vars(args),
    }
    print(
        f"device: {meta['device']}; torch {torch.__version__}; batch {args.batch_size} x {args.seq_len} "
        f"({args.data}); {args.steps} steps, steady after {args.skip}",
        file=sys.stderr,
    )
    rows: list[dict] = []
    for method in [m for m in args.methods.split(",") if m]:
        for mode in modes:
            print(f"== {method}, compile {mode}", file=sys.stderr, flush=True)
            rows.append(run_one(method, mode, args))
            if args.json:
                Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
            print(table(rows, last=1), file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
