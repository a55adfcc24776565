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
