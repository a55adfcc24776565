"""benchmarks/symmetric_4bit.py: its Q4_0 reference is gguf's Q4_0, and its searched symmetric
fit stays in Q4_0's layout and is no worse than the reference in squared error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import load_benchmark

gguf = pytest.importorskip("gguf")


def _module():
    return load_benchmark("symmetric_4bit")


def _weight() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=generator) * 0.02
    w[3, 5] = 0.3  # an outlier group
    w[7, 32:64] = 0.0  # an all-zero group
    return w


def test_reference_equals_gguf_q4_0() -> None:
    w = _weight()
    kind = gguf.GGMLQuantizationType.Q4_0
    theirs = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), kind), kind)
    ours = _module().q4_0_reference(w, 32).numpy()
    np.testing.assert_array_equal(ours, theirs)


def _is_q4_0_group(group: torch.Tensor, unit: torch.Tensor) -> bool:
    """Whether ``group`` is ``unit * m`` with integer m spanning at most 16 values in -8..8."""
    m = group / unit
    integral = torch.allclose(m, torch.round(m), atol=1e-3)
    m = torch.round(m)
    return integral and float(m.max() - m.min()) <= 15 and float(m.abs().max()) <= 8


def test_search_is_q4_0_layout_and_no_worse() -> None:
    module = _module()
    w = _weight()
    searched = module.symmetric_search(w, 32).reshape(-1, 32)
    reference = module.q4_0_reference(w, 32).reshape(-1, 32)
    assert torch.isfinite(searched).all()
    assert (searched[7 * 8 + 1] == 0).all()  # the all-zero group: row 7, columns 32..63
    for group in searched:  # every group is d * (q - 8) with integer q in 0..15 and d of either sign
        top = group.abs().max()
        if top > 0:
            assert any(_is_q4_0_group(group, top / k) for k in range(1, 9)), group
    x = w.reshape(-1, 32)
    assert float(((x - searched) ** 2).sum()) <= float(((x - reference) ** 2).sum()) * (1 + 1e-6)


def test_the_symmetric_quantiser_is_this_reference() -> None:
    """quant_method "symmetric" (built after this benchmark) gives the reference row's weights,
    so that row measures what a symmetric plan at group 32 evaluates to."""
    from qradaptor.quant.quantizer import dequantize, quantize

    w = _weight()
    assert torch.equal(dequantize(quantize(w, 4, 32, "symmetric")), _module().q4_0_reference(w, 32))
