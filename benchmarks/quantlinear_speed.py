"""QuantLinear forward+backward vs a dense nn.Linear, measured side by side in one run.

Prints a markdown table: per bit-width, milliseconds of one forward + backward (gradient to
the input; the weight is frozen in both) and the ratio to the dense layer, for the eager and
the fused (unpack + dequantise in one kernel) paths: torch.compile and our Triton kernel.

    python benchmarks/quantlinear_speed.py                  # CUDA, bf16, 4096x4096, 2048 tokens
    python benchmarks/quantlinear_speed.py --device cpu --size 1024 --tokens 256   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from qradaptor.quant.modules import COMPILE_ENV, QuantLinear


def time_fwd_bwd(layer: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one forward + backward."""
    grad = torch.randn(x.shape[0], layer.out_features, device=x.device, dtype=x.dtype)
    cuda = x.device.type == "cuda"
    times = []
    for i in range(repeats + 5):
        x.grad = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        layer(x).backward(grad)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            ms = (time.perf_counter() - t0) * 1e3
        if i >= 5:  # warm-up (and compilation) excluded
            times.append(ms)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bits", default="2,3,4,8")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    weight = torch.randn(args.size, args.size, device=device, dtype=dtype) * 0.02
    x = torch.randn(args.tokens, args.size, device=device, dtype=dtype, requires_grad=True)
    dense = nn.Linear(args.size, args.size, bias=False, device=device, dtype=dtype)
    dense.weight.data.copy_(weight)
    dense.requires_grad_(False)
    dense_ms = time_fwd_bwd(dense, x, args.repeats)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device: {name}; {args.size}x{args.size}, {args.tokens} tokens, {dtype}; torch {torch.__version__}"
    )
    print(f"dense nn.Linear fwd+bwd: {dense_ms:.3f} ms\n")
    modes = ["0", "compile", "triton"] if device.type == "cuda" else ["0"]
    names = {"0": "eager", "compile": "torch.compile", "triton": "Triton kernel"}
    print("| bits | " + " | ".join(f"{names[m]} ms | / dense" for m in modes) + " |")
    print("|---:|" + "---:|---:|" * len(modes))
    for bits in [int(b) for b in args.bits.split(",")]:
        layer = QuantLinear.from_weight(weight.float(), None, bits, 64, "rtn", dtype)
        cells = []
        for mode in modes:
            os.environ[COMPILE_ENV] = mode
            ms = time_fwd_bwd(layer, x, args.repeats)
            cells.append(f"{ms:.3f} | {ms / dense_ms:.2f}")
        print(f"| {bits} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
