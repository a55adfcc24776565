"""The symmetric fit: llama.cpp's Q4_0 / Q5_0 / Q8_0 rounding, checked against gguf's own
quantiser (a port of ggml-quants.c), by hand, and through the modules and the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qradaptor.quant.bitpack import unpack
from qradaptor.quant.cache import QuantCache
from qradaptor.quant.modules import QuantEmbedding, QuantLinear, simulated_linear
from qradaptor.quant.quantizer import SYMMETRIC, dequantize, quantize, relative_error

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
GGUF_TYPES = {4: T.Q4_0, 5: T.Q5_0, 8: T.Q8_0}


def heavy_tailed(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # StudentT samples from the global generator
    return torch.distributions.StudentT(3.0).sample((rows, cols)) * 0.02


def awkward(seed: int = 1) -> torch.Tensor:
    """Normal weights with the hard groups: all zero, ties of +a and -a for the extreme, a lone
    extreme, values on the rounding boundaries of the extreme's grid."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 128, generator=g)
    w[0, :32] = 0.0
    w[1, :32] = 0.25
    w[1, 5], w[1, 9] = -1.0, 1.0  # equal magnitudes: the first (negative) one sets d
    w[2, 32:64] = torch.linspace(-1, 1, 32)
    w[3, :32] = torch.arange(32, dtype=torch.float32) / 8 - 2  # on the Q4_0 grid exactly
    w[4, 64:96] = 1e-3 * torch.randn(32, generator=g)
    w[4, 70] = 50.0
    return w


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("make", [heavy_tailed, awkward], ids=["heavy-tailed", "awkward"])
def test_dequantised_values_equal_ggufs_bit_for_bit(bits: int, make) -> None:
    w = make()
    ours = dequantize(quantize(w, bits, 32, SYMMETRIC)).numpy()
    theirs = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), GGUF_TYPES[bits]), GGUF_TYPES[bits])
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_q4_0_rule_by_hand() -> None:
    # One group of 32: extreme m = -2.0 at index 0, so d = m / -8 = 0.25 and q = trunc(x / d + 8.5).
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2], x[0, 3], x[0, 4] = -2.0, 1.9, 0.12, 0.13, -0.13
    qt = quantize(x, 4, 32, SYMMETRIC)
    assert qt.zero is None and qt.symmetric and qt.scale.item() == 0.25
    codes = unpack(qt.packed, 4, 32)[0, :5].tolist()
    # -2/0.25+8.5 = 0.5 -> 0; 1.9/0.25+8.5 = 16.1 -> 15 (the far side stops at M - 1);
    # 0.12 -> 8.98 -> 8; 0.13 -> 9.02 -> 9; -0.13 -> 7.98 -> 7 (trunc, not round)
    assert codes == [0, 15, 8, 9, 7]
    assert dequantize(qt)[0, :5].tolist() == [-2.0, 1.75, 0.0, 0.25, -0.25]


def test_q8_0_rule_by_hand() -> None:
    # amax 1.27 -> d = 0.01; q = roundf(x / d), halves away from zero, stored as q + 128.
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([1.27, -1.27, 0.5, -0.5])
    qt = quantize(x, 8, 32, SYMMETRIC)
    assert qt.scale.item() == pytest.approx(0.01, rel=1e-3)
    codes = unpack(qt.packed, 8, 32)[0].tolist()
    assert codes[:4] == [255, 1, 178, 78] and set(codes[4:]) == {128}


def test_all_zero_group_dequantises_to_zero() -> None:
    for bits in range(2, 9):
        qt = quantize(torch.zeros(2, 64), bits, 32, SYMMETRIC)
        assert torch.equal(dequantize(qt), torch.zeros(2, 64))
        assert set(unpack(qt.packed, bits, 64).unique().tolist()) == {1 << (bits - 1)}


def test_every_bit_width_and_group_size() -> None:
    w = heavy_tailed(cols=512)
    errors = [relative_error(w, quantize(w, b, 64, SYMMETRIC)) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.015  # absmax at group 64 of heavy tails: about 1%
    # smaller groups fit better; the extreme of each group is reproduced (signed-max rule)
    assert relative_error(w, quantize(w, 3, 32, SYMMETRIC)) < relative_error(
        w, quantize(w, 3, 128, SYMMETRIC)
    )
    qt = quantize(w, 3, 128, SYMMETRIC)
    groups, fitted = w.reshape(-1, 128), dequantize(qt).reshape(-1, 128)
    at = groups.abs().argmax(dim=1, keepdim=True)
    assert torch.allclose(fitted.gather(1, at), groups.gather(1, at), rtol=1e-3)


def test_storage_is_bits_plus_one_scale_per_group() -> None:
    qt = quantize(torch.randn(48, 192), 4, 32, SYMMETRIC)
    assert qt.scale.shape == (48, 6) and qt.scale.dtype == torch.float16
    assert qt.parts() == (qt.packed, qt.scale)
    assert qt.nbytes * 8 / (48 * 192) == 4 + 16 / 32
    scale, zero = qt.metadata()  # a zero made for code that reads (q - z) * s
    assert torch.equal(zero, torch.full((48, 6), 8.0, dtype=torch.float16))


def test_refusals() -> None:
    with pytest.raises(ValueError, match="needs bits >= 2"):
        quantize(torch.randn(4, 64), 1, 32, SYMMETRIC)
    with pytest.raises(ValueError, match="double_quant .* rtn and hqq only"):
        quantize(torch.randn(4, 64), 4, 32, SYMMETRIC, double_quant=True)


def test_modules_and_cache() -> None:
    w, bias, x = heavy_tailed(32, 64), torch.randn(32), torch.randn(3, 64)
    layer = QuantLinear.from_weight(w, bias, 4, 32, SYMMETRIC)
    assert layer.zero is None and "zero" not in layer.state_dict()
    dense = dequantize(quantize(w, 4, 32, SYMMETRIC))
    assert torch.equal(layer(x), torch.nn.functional.linear(x, dense, bias))
    assert torch.equal(simulated_linear(w, bias, 4, 32, SYMMETRIC)(x), layer(x))
    embedding = QuantEmbedding.from_embedding(torch.nn.Embedding.from_pretrained(w), 5, 32, SYMMETRIC)
    ids = torch.tensor([[3, 0, 31]])
    assert torch.equal(embedding(ids), dequantize(quantize(w, 5, 32, SYMMETRIC))[ids])
    cache = QuantCache()
    asym, sym = cache.get("l", w, 4, 32, "rtn"), cache.get("l", w, 4, 32, SYMMETRIC)
    assert asym.zero is not None and sym.zero is None and cache.misses == 2
    assert cache.get("l", w, 4, 32, SYMMETRIC) is sym and cache.hits == 1
