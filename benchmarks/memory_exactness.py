"""Is the memory model exact? Predicted bytes of a plan vs the tensor bytes of the built model.

For the embedded SmolLM2-135M-Instruct and uniform plans over bits x ranks, builds each plan
with ``apply_plan`` (packed QuantLinear weights, PEFT LoRA adapters) on a fresh copy of the
fp32 model and compares ``model_tensor_bytes`` of the result with ``plan_memory(...,
weight_bytes=4)``. Codes are fitted with "rtn" for speed: the bytes stored depend only on
the shapes, bits, group size and ranks, never on the values the fit finds.

Prints a markdown table, plus the bytes the same plans take at bf16 (``weight_bytes=2``),
which is what a GPU run stores. Exits with status 1 if any plan's bytes differ.

    python benchmarks/memory_exactness.py
    python benchmarks/memory_exactness.py --bits 4 --ranks 0,16      # a quick run
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time

import torch

from qradaptor.build import apply_plan
from qradaptor.memory import model_tensor_bytes, plan_memory
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan

MIB = 1024 * 1024


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="2,3,4,8,16", help="comma-separated bit-widths")
    parser.add_argument("--ranks", default="0,8,16", help="comma-separated LoRA ranks")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2)")
    args = parser.parse_args()

    start = time.perf_counter()
    loaded = load_model(args.model, dtype=torch.float32)
    structure = inspect_model(loaded.model)
    print(
        f"model: {loaded.source} ({structure.describe()}, tied={structure.tied}); fp32 on CPU; "
        f"torch {torch.__version__}; {platform.processor() or platform.machine()}"
    )
    print(f"group_size {args.group_size}; codes fitted with rtn (bytes do not depend on the fit)\n")
    print(
        "| plan | avg bits (incl. metadata) | avg rank | trainable params "
        "| predicted bytes (fp32) | built bytes (fp32) | equal? | predicted at bf16 (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|:---:|---:|")
    mismatches = []
    for bits in _ints(args.bits):
        for rank in _ints(args.ranks):
            plan = Plan.uniform(
                structure.num_blocks, bits, rank, group_size=args.group_size, quant_method="rtn"
            )
            predicted = plan_memory(structure, plan, weight_bytes=4)
            bf16 = plan_memory(structure, plan, weight_bytes=2)
            built = apply_plan(copy.deepcopy(loaded.model), plan)
            built_bytes = model_tensor_bytes(built)
            trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
            equal = predicted.total_bytes == built_bytes and predicted.adapter_params == trainable
            if not equal:
                mismatches.append(plan.name)
            print(
                f"| {plan.name} | {predicted.avg_bits:.3f} | {predicted.avg_rank:g} | "
                f"{trainable:,} | {predicted.total_bytes:,} | {built_bytes:,} | "
                f"{'yes' if equal else 'NO'} | {bf16.total_bytes / MIB:.2f} |",
                flush=True,
            )
            del built
    print(f"\n{time.perf_counter() - start:.1f} s in all")
    if mismatches:
        print(f"MISMATCH in {len(mismatches)} plan(s): {', '.join(mismatches)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
