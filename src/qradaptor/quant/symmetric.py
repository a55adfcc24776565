"""Symmetric group-wise fit in llama.cpp's layout: one float16 scale per group and no zero point.

Notation (one group of g weights x, b bits, M = 2**(b - 1) the code midpoint):
    d      the group's scale, stored in float16 (its sign may be negative)
    q      codes, integers in [0, 2**b - 1]
    x_hat  = (q - M) * d, the dequantised weights

The rules are llama.cpp's reference quantisers (ggml-quants.c), so that at b = 4, 5 and 8 with
g = 32 the codes and scales are the blocks of its Q4_0, Q5_0 and Q8_0 types bit for bit:
    b = 2..7  "signed max" (``quantize_row_q4_0_ref`` at b = 4, ``q5_0`` at b = 5): m is the
              group's value of largest magnitude with its sign (the first one on a tie),
              d = m / -M and q = min(2**b - 1, trunc(x / d + M + 0.5)). The extreme lands on
              code 0 (x_hat = -M d = m), so all 2**b codes are used, the far side up to M - 1.
    b = 8     "absmax" (``quantize_row_q8_0_ref``): d = max|x| / (M - 1), q = M + roundf(x / d),
              rounding halves away from zero; codes 1..255 (Q8_0's int8 values -127..127 + M).
Both divide by multiplying with the float32 inverse of the float32 d, as ggml does, and only
the stored d is rounded to float16 (so the codes are ggml's, not the best ones for the rounded
d). One bit has no symmetric grid worth the name ({m, 0}); it is refused.

Stored bits per weight: b + 16 / g (4.5 at b = 4, g = 32), half the metadata of an asymmetric
fit, which keeps a float16 zero per group as well.
"""

from __future__ import annotations

import torch

SYMMETRIC_MIN_BITS = 2
"""Fewest bits the symmetric fit takes (one bit would hold only {m, 0})."""
ABSMAX_BITS = 8
"""The bit-width fitted by Q8_0's absmax rule; every other one by Q4_0's signed-max rule."""


def code_midpoint(bits: int) -> int:
    """M = 2**(bits - 1): the code that dequantises to zero."""
    return 1 << (bits - 1)


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``roundf`` (halves away from zero), exactly: floor(|v|) plus 1 where the fraction is
    >= 0.5 (``|v| - floor|v|`` and its double are exact in float32), with v's sign."""
    a = v.abs()
    whole = torch.floor(a)
    return torch.copysign(whole + torch.floor(2 * (a - whole)), v)


def symmetric_fit(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and codes of llama.cpp's symmetric rule for each row of ``groups``.

    Args:
        groups: (n, g) float32, one quantisation group per row.
        bits: 2..8.

    Returns:
        (d, q): d (n, 1) float32, the scales before rounding to float16; q (n, g) float32
        codes in [0, 2**bits - 1].
    """
    assert groups.dtype == torch.float32 and SYMMETRIC_MIN_BITS <= bits <= ABSMAX_BITS
    mid = code_midpoint(bits)
    if bits == ABSMAX_BITS:
        d = groups.abs().amax(dim=1, keepdim=True) / (mid - 1)  # (n, 1)
        inverse = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
        return d, _round_half_away(groups * inverse) + mid
    # argmax gives the first of equal magnitudes, as ggml's strict "amax < |v|" scan does.
    extreme = torch.gather(groups, 1, groups.abs().argmax(dim=1, keepdim=True))  # (n, 1)
    d = extreme / -mid
    inverse = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    # Not clamped below: |x / d| <= M, so x / d + M + 0.5 >= 0.5 up to rounding, and trunc >= 0.
    q = torch.trunc(groups * inverse + (mid + 0.5)).clamp_(max=2 * mid - 1)
    return d, q
