"""Our quantised weights as compressed-tensors' pack-quantized tensors (integer zero points).

Ours: ``W_hat = (q - z) * s`` per group of ``g`` inputs, float16 ``s`` and ``z``, ``z`` a real
number (both ``rtn`` and ``hqq`` fit it unrounded: ``quant/quantizer.py``). compressed-tensors:
``W = (q' - zp) * s`` with ``q'`` and ``zp`` signed integers in ``[-2**(b-1), 2**(b-1) - 1]``;
the zero point is packed into int32 beside the codes, so it must be an integer. Subtracting
``2**(b-1)`` from both code and zero leaves ``q - z`` unchanged, so our codes go in unchanged
exactly when every zero of the tensor is an integer in ``[0, 2**b - 1]`` (``exact_codes``).

Otherwise (every tensor our quantisers fit, in practice) the weight is re-quantised with an
integer zero point (``integer_zero_fit``): start from a real-zero fit (ours, or the plan's
quantiser on the merged weight), round the zero to the nearest integer, recompute the codes,
then refit the scale by least squares with the codes and zero fixed (the offset the rounding
made is partly absorbed by the scale), keeping per group whichever of the two is closer.

A symmetric fit (quant_method "symmetric": ``W_hat = (q - 2**(b-1)) * s``, no zero) is
compressed-tensors' symmetric scheme as it is: ``q' = q - 2**(b-1)``, no zero point, the same
float16 scale (``symmetric: true`` in the config group). Its codes go in unchanged whenever the
weight is still on their grid and the export dtype holds the scales (float16 and float32 do);
otherwise the target is fitted afresh by the same symmetric rule (``symmetric_refit``). Its
scales may be negative (llama.cpp's rule d = m / -2**(b-1) keeps the sign of the group's
extreme, which then lands on the code -2**(b-1)); compressed-tensors multiplies them as they are.

The tensors are written by compressed-tensors' own ``PackedQuantizationCompressor``, handed
the dequantised weight, the scale and the zero point: its quantiser then recovers exactly our
codes (``(q - zp) * s / s + zp`` rounds back to ``q``), which ``pack_codes`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from qradaptor.quant.quantizer import QuantizedTensor


@dataclass(frozen=True)
class IntegerCodes:
    """A weight as unsigned codes with per-group scale and integer zero point."""

    codes: torch.Tensor
    """(rows, cols) uint8 in [0, 2**bits - 1]."""
    scale: torch.Tensor
    """(rows, cols // group_size) in the export's scale dtype."""
    zero: torch.Tensor | None
    """(rows, cols // group_size) int16, integers in [0, 2**bits - 1]; None for a symmetric fit
    (every zero the code midpoint 2**(bits - 1), compressed-tensors' zero point 0)."""
    bits: int
    """Bits per code."""
    group_size: int
    """Input columns per (scale, zero)."""

    def dequantize(self) -> torch.Tensor:
        """(rows, cols) float32 ``(q - zp) * s``, what compressed-tensors computes in float32."""
        rows, cols = self.codes.shape
        q = self.codes.float().reshape(rows, -1, self.group_size)
        from qradaptor.quant.symmetric import code_midpoint

        z = float(code_midpoint(self.bits)) if self.zero is None else self.zero.float().unsqueeze(-1)
        w = (q - z) * self.scale.float().unsqueeze(-1)
        return w.reshape(rows, cols)


def exact_codes(qt: QuantizedTensor, scale_dtype: torch.dtype) -> IntegerCodes | None:
    """Our codes unchanged, if every zero is an integer in range (a symmetric fit has none) and
    every scale is held exactly by ``scale_dtype``; else None."""
    import torch

    from qradaptor.quant.bitpack import unpack

    if qt.symmetric:
        if not torch.equal(qt.scale.to(scale_dtype).float(), qt.scale.float()):
            return None
        codes = unpack(qt.packed, qt.bits, qt.shape[1])
        return IntegerCodes(codes, qt.scale.to(scale_dtype), None, qt.bits, qt.group_size)
    scale, zero = qt.metadata()
    qmax = (1 << qt.bits) - 1
    z = zero.float()
    if not (torch.equal(z, z.round()) and bool(((z >= 0) & (z <= qmax)).all())):
        return None
    if not torch.equal(scale.to(scale_dtype).float(), scale.float()):
        return None
    codes = unpack(qt.packed, qt.bits, qt.shape[1])
    return IntegerCodes(codes, scale.to(scale_dtype), z.to(torch.int16), qt.bits, qt.group_size)


def integer_zero_fit(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    scale: torch.Tensor,
    zero: torch.Tensor,
    scale_dtype: torch.dtype,
) -> IntegerCodes:
    """Re-quantises ``weight`` (rows, cols) with integer zero points, from a real-zero fit.

    Args:
        weight: the weight to hold (the merged one).
        bits: bits per code.
        group_size: inputs per group.
        scale: (rows, groups) the real-zero fit's scales to start from.
        zero: (rows, groups) its zeros (real numbers).
        scale_dtype: the dtype the scales are stored in; codes are fitted against the stored scales.

    Returns:
        Codes, scales and integer zeros, per group the better (l2) of: the rounded zero with the
        starting scale, and the rounded zero with the least-squares scale.
    """
    import torch

    qmax = (1 << bits) - 1
    rows, cols = weight.shape
    w = weight.detach().float().reshape(-1, group_size)  # (rows * groups, g)
    zp = zero.float().reshape(-1, 1).round().clamp(0, qmax)
    tiny = torch.finfo(scale_dtype).tiny

    def stored(s: torch.Tensor) -> torch.Tensor:
        return s.clamp_min(tiny).to(scale_dtype).float()

    def codes_and_error(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.round(w / s + zp).clamp_(0, qmax)
        return q, ((w - (q - zp) * s) ** 2).sum(dim=1, keepdim=True)

    s0 = stored(scale.float().reshape(-1, 1))
    q0, err0 = codes_and_error(s0)
    d = q0 - zp  # with codes and zero fixed, W ~ d * s is a 1-D regression through the origin
    dd = (d * d).sum(dim=1, keepdim=True)
    s_ls = torch.where(dd > 0, (d * w).sum(dim=1, keepdim=True) / dd.clamp_min(1e-12), s0)
    s1 = stored(torch.where(s_ls > 0, s_ls, s0))
    q1, err1 = codes_and_error(s1)
    better = err1 < err0
    q = torch.where(better, q1, q0)
    s = torch.where(better, s1, s0)
    groups = (rows, cols // group_size)
    return IntegerCodes(
        q.to(torch.uint8).reshape(rows, cols),
        s.reshape(groups).to(scale_dtype),
        zp.reshape(groups).to(torch.int16),
        bits,
        group_size,
    )


def symmetric_refit(
    weight: torch.Tensor, bits: int, group_size: int, scale_dtype: torch.dtype
) -> IntegerCodes:
    """``weight`` (rows, cols) fitted by the symmetric rule (``quant.symmetric``), its scales
    stored in ``scale_dtype``: where that rounds a scale (bfloat16), the group's codes are
    recomputed against the stored one, round to nearest within the code range."""
    import torch

    from qradaptor.quant.quantizer import quantize
    from qradaptor.quant.symmetric import code_midpoint

    qt = quantize(weight, bits, group_size, "symmetric")
    exact = exact_codes(qt, scale_dtype)
    if exact is not None:
        return exact
    rows, cols = weight.shape
    mid = code_midpoint(bits)
    d = qt.scale.to(scale_dtype)  # (rows, groups)
    w = weight.detach().float().reshape(rows, -1, group_size)
    safe = torch.where(d == 0, torch.ones_like(d), d).float().unsqueeze(-1)  # an all-zero group
    codes = torch.round(w / safe + mid).clamp_(0, 2 * mid - 1)  # (rows, groups, g)
    return IntegerCodes(codes.to(torch.uint8).reshape(rows, cols), d, None, bits, group_size)


def scheme_args(bits: int, group_size: int, symmetric: bool = False) -> dict[str, Any]:
    """compressed-tensors' ``QuantizationArgs`` of our weights: integer, asymmetric (a zero
    point per group) or ``symmetric`` (none), group strategy, static."""
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": "group",
        "group_size": group_size,
        "dynamic": False,
    }


def pack_codes(ic: IntegerCodes) -> dict[str, torch.Tensor]:
    """``weight_packed`` (int32), ``weight_scale``, ``weight_zero_point`` (int32, packed along
    the output rows; none when symmetric) and ``weight_shape`` of one linear, by
    compressed-tensors' compressor.

    Raises:
        ImportError: without the ``compressed-tensors`` package (``pip install qradaptor[serve]``).
    """
    import torch
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    symmetric = ic.zero is None
    scheme = QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(**scheme_args(ic.bits, ic.group_size, symmetric))
    )
    offset = 1 << (ic.bits - 1)  # compressed-tensors' codes and zeros are signed
    state = {"weight": ic.dequantize(), "weight_scale": ic.scale}
    if ic.zero is not None:  # a symmetric scheme has no zero point
        state["weight_zero_point"] = (ic.zero - offset).to(torch.int8)
    out = dict(PackedQuantizationCompressor.compress(state, scheme))
    back = unpack_from_int32(out["weight_packed"], ic.bits, ic.codes.shape).to(torch.int16) + offset
    assert torch.equal(back, ic.codes.to(torch.int16)), "the compressor changed our codes"
    return out
