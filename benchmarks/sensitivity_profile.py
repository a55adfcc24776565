"""Block sensitivity (Eq. 6, §3.3) of the embedded SmolLM2-135M-Instruct on BoolQ calibration.

Profiles S_l(b) = mean KL(P_fp || P_q) over calibration tokens for every block l and every
bit-width b, with only block l quantised. Prints a markdown table (block, KL at each bits),
the Spearman and Pearson correlation of the lowest-bits KL with depth, and the wall time;
writes ``sensitivity.json``, ``sensitivity.csv`` and ``sensitivity.png`` to ``--out``.

Note: the embedded GGUF stores the weights as Q4_1, so "full precision" here means those
weights dequantised to float32.

    python benchmarks/sensitivity_profile.py --out /tmp/sens                 # 8 x 256 tokens
    python benchmarks/sensitivity_profile.py --out /tmp/sens --num-sequences 4 --bits 2,4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from qradaptor.correlation import pearson, spearman
from qradaptor.data import load_texts, pack_texts
from qradaptor.models.loading import load_model
from qradaptor.sensitivity import profile_sensitivity
from qradaptor.sensitivity_table import plot_sensitivity


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    """Runs the profile and writes the report files."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for JSON/CSV/PNG")
    parser.add_argument("--bits", type=_ints, default=[2, 3, 4, 8], help="comma-separated bit-widths")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--num-sequences", type=int, default=8, help="calibration windows")
    parser.add_argument("--group-size", type=int, default=64, help="quantisation group size")
    parser.add_argument("--method", default="hqq", help="quantisation method: rtn or hqq")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(None)
    calibration = pack_texts(
        load_texts(None), loaded.tokenizer, args.seq_len, num_sequences=args.num_sequences, seed=0
    )  # (N, T)
    start = time.perf_counter()
    table = profile_sensitivity(
        loaded.model,
        calibration,
        bits=args.bits,
        group_size=args.group_size,
        quant_method=args.method,
        batch_size=args.batch_size,
    )
    wall = time.perf_counter() - start

    print(
        f"\nSmolLM2-135M-Instruct (embedded, Q4_1 dequantised), {table.tokens} tokens "
        f"({calibration.shape[0]} x {calibration.shape[1]}), {table.quant_method}, "
        f"group {table.group_size}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| block | " + " | ".join(f"KL {b}-bit" for b in table.bits) + " |")
    print("|---:|" + "---:|" * len(table.bits))
    for block, row in enumerate(table.kl):
        print(f"| {block} | " + " | ".join(f"{v:.4g}" for v in row) + " |")
    low = table.min_bits_profile()
    depth = list(range(table.num_blocks))
    print(
        f"\n{min(table.bits)}-bit KL vs depth: Spearman {spearman(depth, low):+.3f}, "
        f"Pearson {pearson(depth, low):+.3f}"
    )
    top = sorted(depth, key=lambda i: low[i], reverse=True)[:5]
    print(f"most sensitive blocks at {min(table.bits)} bits: {top}")
    print(f"wall time (profiling, excl. model load): {wall:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    (args.out / "sensitivity.json").write_text(json.dumps(table.to_dict(), indent=1))
    (args.out / "sensitivity.csv").write_text(table.to_csv())
    plot_sensitivity(table, args.out / "sensitivity.png")
    print(f"wrote {args.out}/sensitivity.{{json,csv,png}}")


if __name__ == "__main__":
    main()
