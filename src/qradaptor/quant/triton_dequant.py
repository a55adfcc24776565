"""A Triton kernel that unpacks bit-plane codes and dequantises them in one pass (CUDA only).

Each program writes a (BLOCK_R, BLOCK_C) tile of the dense weight: for every output
column it reads its byte in each of the ``bits`` planes (eight neighbouring columns share
a byte, so the reads come from cache), shifts out its bit, and scales. It computes exactly what
``quantizer.dequantize_parts`` computes ((q - z) * s in float32, rounded once), and a GPU
test checks the two agree bit for bit. Imported only when a CUDA tensor is dequantised.

A symmetric fit (no stored zero) is given the kernel as a zero tensor of its midpoint
2**(bits - 1), made per call: the same formula as the torch path, at the cost of one
(rows, groups) float16 tensor, 1/g of the dense weight the call writes anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qradaptor.quant.symmetric import code_midpoint


@triton.jit
def _dequant_kernel(
    packed_ptr,
    scale_ptr,
    zero_ptr,
    out_ptr,
    rows,
    cols,
    row_bytes,
    plane_bytes,
    groups,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,) rows
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,) output columns
    mask = (r[:, None] < rows) & (c[None, :] < cols)  # (BLOCK_R, BLOCK_C)
    byte_at = packed_ptr + r[:, None] * row_bytes + (c // 8)[None, :]
    shift = (c % 8)[None, :]
    # Eight neighbouring columns read the same byte of a plane: the loads hit the cache.
    code = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
    for j in tl.static_range(BITS):
        byte = tl.load(byte_at + j * plane_bytes, mask=mask, other=0).to(tl.int32)
        code |= ((byte >> shift) & 1) << j
    g = r[:, None] * groups + (c // GROUP)[None, :]
    s = tl.load(scale_ptr + g, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zero_ptr + g, mask=mask, other=0.0).to(tl.float32)
    w = (code.to(tl.float32) - z) * s
    tl.store(out_ptr + r[:, None] * cols + c[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


BLOCKS = (1, 2048)
"""(rows, columns) of one program's output tile; one row with wide tiles measured fastest."""
NUM_WARPS = 8


def dequantize_triton(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    cols: int,
    group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Same contract as ``quantizer.dequantize_parts`` for a 2-D packed weight on CUDA."""
    if zero is None:  # symmetric: every group's zero is the code midpoint
        zero = torch.full_like(scale, code_midpoint(bits))
    rows = packed.shape[0]
    plane_bytes = (cols + 7) // 8
    out = torch.empty(rows, cols, device=packed.device, dtype=dtype)
    block_r, block_c = BLOCKS
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _dequant_kernel[grid](
        packed,
        scale,
        zero,
        out,
        rows,
        cols,
        packed.shape[1],
        plane_bytes,
        scale.shape[1],
        BITS=bits,
        GROUP=group_size,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )
    return out
