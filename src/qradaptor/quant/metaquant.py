"""Double quantisation: scales and zeros stored as 8-bit codes (QLoRA's "Double Quantization").

A weight quantised at group size g carries one scale and one zero per group: 2 x 16 bits per g
weights, 0.5 bit per weight at g = 64. Stored as 8-bit codes they cost about half that.

Notation (one metadata tensor, scales or zeros, flattened row-major to n values; blocks of
``META_BLOCK`` consecutive values, the last one possibly shorter):
    step   = (max - min) / 255 of the block, float16
    offset = min of the block, float16
    code   = round((v - offset) / step), an integer in 0..255 (uint8)
    v_hat  = float16(code * step + offset)

Unlike QLoRA (symmetric 8-bit floats of mean-centred scales, an fp32 constant per block of
256), this is asymmetric linear 8-bit with a 16-bit step and offset per block: the zeros of an
asymmetric quantiser are not centred, and a min-max code keeps every scale positive. Storage of
n values: ``n + 4 * ceil(n / META_BLOCK)`` bytes (``meta_nbytes``).
"""

from __future__ import annotations

import torch

META_BLOCK = 256
"""Metadata values sharing one (step, offset) pair."""
META_CODE_MAX = 255
"""Largest 8-bit code."""
META_DTYPE = torch.float16
"""Storage type of each block's step and offset (and of the dequantised values)."""


def meta_nbytes(n: int) -> int:
    """Bytes of ``n`` double-quantised values: one byte each plus a float16 (step, offset) per block."""
    return n + 2 * 2 * -(-n // META_BLOCK)


def quantize_meta(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit codes of ``values`` (any shape) and the (step, offset) of each block.

    Returns:
        (codes, meta): codes uint8 of ``values``' shape; meta float16 (ceil(n / META_BLOCK), 2),
        column 0 the step, column 1 the offset.
    """
    flat = values.detach().float().reshape(-1)  # (n,)
    n = flat.numel()
    pad = (-n) % META_BLOCK
    # Pad with a copy of the last value: it moves no block's min or max.
    padded = torch.cat([flat, flat[-1:].expand(pad)]) if pad else flat
    blocks = padded.reshape(-1, META_BLOCK)  # (nb, META_BLOCK)
    lo = blocks.amin(dim=1, keepdim=True)
    hi = blocks.amax(dim=1, keepdim=True)
    # Step and offset in their storage type, the offset rounded down and the step up, so that
    # 255 steps from the offset reach every value: a step rounded to nearest can fall short by
    # 255 half-spacings, which for the subnormal steps of 6- and 8-bit scales (their block
    # ranges are below 255 x float16's least normal, 6.1e-5) clips the largest scales by a few
    # percent. The codes are then the best ones for what dequantisation will see.
    offset = float16_toward(lo, down=True)
    step = float16_toward((hi - offset) / META_CODE_MAX, down=False)
    # Codes against the stored step itself, however small; a block of equal values (step 0)
    # takes code 0. (Clamping the step to float16's least normal, as this did until 2026-12-06,
    # coded small scales with a larger step than the one stored: 8-bit weights came back 19x
    # worse than without double quantisation, docs/ALLOCATION.md "Double quantisation's small
    # scales".)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.round((blocks - offset) / safe).clamp_(0, META_CODE_MAX).to(torch.uint8)
    meta = torch.cat([step, offset], dim=1).to(META_DTYPE)  # (nb, 2)
    return codes.reshape(-1)[:n].reshape(values.shape), meta


def float16_toward(values: torch.Tensor, *, down: bool) -> torch.Tensor:
    """float32 ``values`` rounded to float16 and, where that rounded them up (``down``) or down
    (not ``down``), moved one float16 spacing back: at most, or at least, the values.
    Arithmetic only, the same on every device."""
    rounded = values.to(META_DTYPE).float()
    wrong_side = rounded > values if down else rounded < values
    # The spacing of float16 at |x|: 2^(e - 10) for x in [2^e, 2^(e+1)), 2^-24 below 2^-14.
    exponent = torch.floor(torch.log2(rounded.abs().clamp_min(2.0**-14)))
    spacing = torch.exp2(exponent - 10)
    moved = rounded - spacing if down else rounded + spacing
    return torch.where(wrong_side, moved, rounded).to(META_DTYPE).float()


def dequantize_meta(codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """float16 values of 8-bit ``codes`` (any shape) with each block's (step, offset) from ``meta``."""
    flat = codes.reshape(-1).float()  # (n,)
    block = torch.arange(flat.numel(), device=codes.device) // META_BLOCK
    m = meta.float()[block]  # (n, 2)
    return (flat * m[:, 0] + m[:, 1]).to(META_DTYPE).reshape(codes.shape)
