from __future__ import annotations

import pytest
import torch

from qradaptor.quant.quantizer import dequantize, quantize, relative_error


def heavy_tailed(rows: int = 256, cols: int = 512, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.distributions.StudentT(3.0).sample((rows, cols)) * 0.02


@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_error_falls_as_bits_rise(method: str) -> None:
    w = heavy_tailed()
    errors = [relative_error(w, quantize(w, b, 64, method)) for b in range(1, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.01  # 8-bit is close to lossless


def test_hqq_beats_rtn_at_two_and_three_bits() -> None:
    w = heavy_tailed()
    for bits, margin in [(2, 0.15), (3, 0.02)]:
        rtn = relative_error(w, quantize(w, bits, 64, "rtn"))
        hqq = relative_error(w, quantize(w, bits, 64, "hqq"))
        assert hqq < rtn - margin, (bits, rtn, hqq)


def test_codes_and_metadata_shapes_and_sizes() -> None:
    w = torch.randn(48, 192)
    qt = quantize(w, 3, 64, "rtn")
    assert qt.packed.shape == (48, 3 * 192 // 8)
    assert qt.scale.shape == qt.zero.shape == (48, 3)
    assert qt.scale.dtype == qt.zero.dtype == torch.float16
    # exactly 3 bits per weight plus two 16-bit numbers per group of 64
    assert qt.nbytes == 48 * 192 * 3 // 8 + 2 * 2 * 48 * 3


def test_rtn_reproduces_a_weight_on_its_grid_exactly() -> None:
    # Each group holds exactly the 16 levels 0..15 scaled by 0.5: 4-bit RTN is lossless.
    levels = torch.arange(16, dtype=torch.float32).repeat(4) * 0.5  # (64,)
    w = torch.stack([levels, levels.flip(0)])
    assert torch.equal(dequantize(quantize(w, 4, 64, "rtn")), w)


def test_dequantize_dtype() -> None:
    w = torch.randn(8, 64)
    assert dequantize(quantize(w, 4), torch.bfloat16).dtype == torch.bfloat16


def test_group_size_must_divide_input() -> None:
    with pytest.raises(ValueError, match=r"group_size=64 does not divide the input size 96 .* e.g. \[32\]"):
        quantize(torch.randn(4, 96), 4, 64)


@pytest.mark.parametrize("bits", [0, 9, 16, 2.5])
def test_bits_out_of_range(bits: object) -> None:
    with pytest.raises(ValueError, match="bits must be an integer in 1..8"):
        quantize(torch.randn(4, 64), bits)  # type: ignore[arg-type]


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"method must be one of \('rtn', 'hqq', 'symmetric'\), got 'gptq'"):
        quantize(torch.randn(4, 64), 4, 64, "gptq")  # type: ignore[arg-type]


def hqq_fit_reference(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HQQ fit as first written (codes and residual computed twice per iteration); the
    refit is shared. benchmarks/profile_speed.py times it against ``_hqq_fit``."""
    from qradaptor.quant.quantizer import _codes, _minmax_fit, least_squares_refit

    p, beta = 0.7, 10.0
    scale, zero = _minmax_fit(w, qmax)
    best_zero, best_err = zero.clone(), float("inf")
    for _ in range(20):
        q = _codes(w, scale, zero, qmax)
        x = w - (q - zero) * scale
        residual = torch.sign(x) * torch.relu(x.abs() - x.abs().clamp_min(1e-12).pow(p - 1) / beta)
        zero = (q - (w - residual) / scale).mean(dim=1, keepdim=True)
        beta *= 1.01
        err = float((w - (_codes(w, scale, zero, qmax) - zero) * scale).abs().mean())
        if err >= best_err:
            break
        best_zero, best_err = zero.clone(), err
    zero = best_zero
    return least_squares_refit(w, _codes(w, scale, zero, qmax), scale, zero)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("spread", [0.02, 1.0])
def test_hqq_fit_is_bit_identical_to_the_reference_fit(bits: int, spread: float) -> None:
    from qradaptor.quant.quantizer import _hqq_fit

    # spread 1.0 puts many residuals above the shrink's cutoff, 0.02 almost none (pow skipped).
    w = (heavy_tailed(96, 256, seed=bits) / 0.02 * spread).reshape(-1, 64)  # (groups, 64)
    scale, zero = _hqq_fit(w, (1 << bits) - 1)
    ref_scale, ref_zero = hqq_fit_reference(w, (1 << bits) - 1)
    assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)


def test_shrink_skips_pow_only_where_the_result_is_zero() -> None:
    from qradaptor.quant.quantizer import _shrink_lp

    cutoff = 10.0 ** (-1 / 1.3)  # |x|**(2 - p) = 1 / beta at p = 0.7, beta = 10
    x = torch.tensor([-0.9, -0.5, -0.99 * cutoff, 0.0, 0.98 * cutoff, 1.01 * cutoff, 0.3])
    expected = torch.sign(x) * torch.relu(x.abs() - x.abs().clamp_min(1e-12).pow(-0.3) / 10.0)
    assert torch.equal(_shrink_lp(x, 10.0, 0.7), expected)
    assert expected[-2] > 0 and expected[2] == 0  # both sides of the cutoff are covered
    small = x[2:5]  # all below the cutoff: the fast path
    assert torch.equal(_shrink_lp(small, 10.0, 0.7), torch.zeros(3))


@pytest.mark.parametrize("method", ["rtn", "hqq"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_a_fit_of_tiny_weights_is_as_good_as_the_same_fit_scaled_up(method: str, double_quant: bool) -> None:
    # Weights of std 1e-4: an 8-bit group's scale (range / 255, about 2e-6) is below float16's
    # least normal (6.1e-5). Clamped up to it, the grid was 30x too coarse for the group and the
    # zero, fitted for the real scale, pushed codes to the ends: 13x the error of the same
    # weights scaled up (2026-12-06).
    w = heavy_tailed(64, 256, seed=3)
    big = relative_error(w, quantize(w, 8, 64, method, double_quant=double_quant))
    small = relative_error(w * 5e-3, quantize(w * 5e-3, 8, 64, method, double_quant=double_quant))
    assert small < 2 * big + 2e-3, (big, small)
