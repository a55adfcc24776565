"""Where the time of one dequantisation goes on CUDA: eager vs compiled, vs a plain copy.

python benchmarks/dequant_profile.py [--size 4096] [--bits 4]
"""

from __future__ import annotations

import argparse

import torch

from qradaptor.quant.modules import _compiled_dequantize, _triton_dequantize
from qradaptor.quant.quantizer import dequantize_parts, quantize


def cuda_ms(fn, repeats: int = 100) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--bits", default="2,3,4,8")
    args = parser.parse_args()
    w = torch.randn(args.size, args.size, device="cuda") * 0.02
    dense = w.to(torch.bfloat16)
    print(f"bf16 copy of the dense weight: {cuda_ms(lambda: dense.clone()):.4f} ms")
    compiled = _compiled_dequantize()
    kernel = _triton_dequantize()
    for bits in [int(b) for b in args.bits.split(",")]:
        qt = quantize(w, bits, 64, "rtn")
        call = (qt.packed, qt.scale, qt.zero, bits, args.size, 64, torch.bfloat16)
        diff = (compiled(*call).float() - dequantize_parts(*call).float()).abs().max().item()
        eager = cuda_ms(lambda call=call: dequantize_parts(*call))
        comp = cuda_ms(lambda call=call: compiled(*call))
        tri = cuda_ms(lambda call=call: kernel(*call))
        tdiff = (kernel(*call).float() - dequantize_parts(*call).float()).abs().max().item()
        print(
            f"bits {bits}: eager {eager:.4f} ms, compiled {comp:.4f} ms (max diff {diff}), "
            f"triton {tri:.4f} ms (max diff {tdiff})"
        )
    from qradaptor.quant import triton_dequant

    qt = quantize(w, 4, 64, "rtn")
    call4 = (qt.packed, qt.scale, qt.zero, 4, args.size, 64, torch.bfloat16)
    default = (triton_dequant.BLOCKS, triton_dequant.NUM_WARPS)
    for blocks in [(1, 512), (1, 1024), (1, 2048), (1, 4096), (2, 1024), (2, 2048)]:
        for warps in (4, 8, 16):
            triton_dequant.BLOCKS, triton_dequant.NUM_WARPS = blocks, warps
            ms = cuda_ms(lambda: triton_dequant.dequantize_triton(*call4))
            print(f"triton 4-bit tile {blocks}, {warps} warps: {ms:.4f} ms")
    triton_dequant.BLOCKS, triton_dequant.NUM_WARPS = default
    call = (qt.packed, qt.scale, qt.zero, 4, args.size, 64, torch.bfloat16)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        for _ in range(20):
            _triton_dequantize()(*call)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()
