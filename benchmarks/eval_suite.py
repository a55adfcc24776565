"""The evaluation suite on SmolLM2-135M with a 16-bit base and uniform 8/4/3/2-bit plans (no fine-tuning).

Prints one markdown row per plan: avg bits, perplexity on both corpora, the seven zero-shot
accuracies (acc; acc_norm in the JSON), their average and the wall time; writes every
record as JSON next to the table when --out is given.

    python benchmarks/eval_suite.py                          # GPU, full data, bf16
    python benchmarks/eval_suite.py --device cpu --limit 100 # CPU, first 100 documents per task
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qradaptor.assemble import assemble
from qradaptor.eval.results import to_json
from qradaptor.eval.suite import ZERO_SHOT, run_suite, zero_shot_average
from qradaptor.memory import plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bits", default="16,8,4,3,2")
    parser.add_argument("--quant-method", default="hqq")
    parser.add_argument("--tasks", default="suite")
    parser.add_argument("--out", default=None, help="folder for one JSON per plan")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device {name}, {dtype}, torch {torch.__version__}, limit {args.limit}, batch {args.batch_size}, "
        f"quantiser {args.quant_method}, group 64, no adapters"
    )
    cols = ["ppl_wiki", "ppl_lambada", *ZERO_SHOT]
    print("| plan | avg bits | " + " | ".join(cols) + " | avg acc | avg acc_norm | seconds |")
    print("|---|---:|" + "---:|" * (len(cols) + 3))
    for bits in [int(b) for b in args.bits.split(",")]:
        plan = Plan.uniform(30, bits, 0, quant_method=args.quant_method)
        start = time.perf_counter()
        built = assemble(args.model, plan, dtype=dtype, device=args.device)
        build_s = time.perf_counter() - start
        avg_bits = plan_memory(inspect_model(built.model), plan).avg_bits
        records = run_suite(
            built.model,
            built.tokenizer,
            [args.tasks],
            model_name=built.source,
            plan_hash=plan.plan_hash,
            limit=args.limit,
            batch_size=args.batch_size,
            progress=False,
        )
        seconds = time.perf_counter() - start
        value = {(r.task, r.metric): r.value for r in records}
        cells = [
            f"{value[(t, 'ppl')]:.2f}" if t.startswith("ppl") else f"{value[(t, 'acc')]:.4f}" for t in cols
        ]
        print(
            f"| {plan.name} | {avg_bits:.2f} | "
            + " | ".join(cells)
            + f" | {zero_shot_average(records, 'acc'):.4f} | {zero_shot_average(records, 'acc_norm'):.4f}"
            + f" | {seconds:.0f} (build {build_s:.0f}) |",
            flush=True,
        )
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            meta = {"plan": plan.to_dict(), "device": name, "limit": args.limit, "seconds": seconds}
            (Path(args.out) / f"{plan.name}.json").write_text(to_json(records, meta))
        del built
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
