"""Our codes as compressed-tensors' integer-zero codes: exact where the zeros are integers,
re-fitted (and never worse than rounding the zero alone) where they are not."""

from __future__ import annotations

import pytest
import torch

from qradaptor.export.ct_codes import exact_codes, integer_zero_fit
from qradaptor.quant.bitpack import unpack
from qradaptor.quant.quantizer import QuantizedTensor, dequantize, quantize


def _weight(rows: int = 32, cols: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * 0.05


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_real_zeros_are_refitted_to_integers(bits, method) -> None:
    qt = quantize(_weight(), bits, 32, method)
    scale, zero = qt.metadata()
    assert exact_codes(qt, torch.float16) is None  # our zeros are real numbers
    target = dequantize(qt)
    fit = integer_zero_fit(target, bits, 32, scale, zero, torch.float16)
    qmax = (1 << bits) - 1
    assert fit.zero.dtype == torch.int16 and int(fit.zero.min()) >= 0 and int(fit.zero.max()) <= qmax
    assert int(fit.codes.max()) <= qmax and fit.scale.dtype == torch.float16
    # Rounding the zero alone, codes and scale kept: the fallback the refit must not lose to.
    rounded = torch.repeat_interleave(zero.float().round().clamp(0, qmax), 32, dim=1)
    scales = torch.repeat_interleave(scale.float(), 32, dim=1)
    naive = (unpack(qt.packed, bits, 128).float() - rounded) * scales
    error, naive_error = (fit.dequantize() - target).norm(), (naive - target).norm()
    assert error <= naive_error * (1 + 1e-6)
    assert float(error / target.norm()) < {4: 0.12, 8: 0.008}[bits]


def test_integer_zeros_keep_our_codes() -> None:
    qt = quantize(_weight(), 4, 32, "rtn")
    scale, zero = qt.metadata()
    whole = QuantizedTensor(qt.packed, scale, zero.float().round().clamp(0, 15).half(), qt.shape, 4, 32)
    exact = exact_codes(whole, torch.float16)
    assert exact is not None and torch.equal(exact.dequantize(), dequantize(whole))
    assert exact_codes(whole, torch.bfloat16) is None  # bfloat16 cannot hold every float16 scale


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_codes_are_compressed_tensors_symmetric_scheme_unchanged(bits) -> None:
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    from qradaptor.export.ct_codes import pack_codes, scheme_args

    qt = quantize(_weight(), bits, 32, "symmetric")
    exact = exact_codes(qt, torch.float16)
    assert exact is not None and exact.zero is None
    assert torch.equal(exact.codes, unpack(qt.packed, bits, 128)) and torch.equal(exact.scale, qt.scale)
    assert torch.equal(exact.dequantize(), dequantize(qt))
    packed = pack_codes(exact)  # asserts the compressor kept our codes
    assert "weight_zero_point" not in packed
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**scheme_args(bits, 32, True)))
    theirs = PackedQuantizationCompressor.decompress(packed, scheme)["weight"]
    # compressed-tensors multiplies in the scale's dtype (float16): ours rounded once to it
    assert theirs.dtype == torch.float16 and torch.equal(theirs, dequantize(qt).half())


def test_symmetric_refit_in_bfloat16_recomputes_codes_for_the_stored_scales() -> None:
    from qradaptor.export.ct_codes import symmetric_refit

    w = _weight()
    qt = quantize(w, 4, 32, "symmetric")
    assert exact_codes(qt, torch.bfloat16) is None  # bfloat16 rounds float16 scales
    fit = symmetric_refit(w, 4, 32, torch.bfloat16)
    assert fit.zero is None and fit.scale.dtype == torch.bfloat16
    assert int(fit.codes.min()) >= 0 and int(fit.codes.max()) <= 15
    # round to nearest against the stored scale: within half a step of every weight in range
    step = fit.scale.float().abs().repeat_interleave(32, dim=1)
    inside = (fit.codes > 0) & (fit.codes < 15)
    assert bool(((fit.dequantize() - w).abs()[inside] <= step[inside] / 2 + 1e-7).all())
    error = float((fit.dequantize() - w).norm() / w.norm())
    assert error < 1.05 * float((dequantize(qt) - w).norm() / w.norm())
    assert symmetric_refit(w, 4, 32, torch.float16).codes.equal(unpack(qt.packed, 4, 128))
