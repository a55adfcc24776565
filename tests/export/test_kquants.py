"""Our K-quants: llama.cpp's own quantiser writes the same bytes (a committed fixture, and live
with llama-cpp-python), and gguf's dequantiser reads them as our reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from qradaptor.export.kquant_fit import fit_affine, fit_symmetric, fit_symmetric3
from qradaptor.export.kquants import BLOCK_BYTES, K_TYPES, SUPER, pack, quantize_k, quantize_rows, reconstruct

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ggml_kquants.npz"
"""A seeded tensor and llama.cpp's own bytes of it per K type (``tests/fixtures/ggml_kquants.py``)."""
GAUSSIAN_ERROR = {"Q2_K": 0.300, "Q3_K": 0.154, "Q4_K": 0.0725, "Q5_K": 0.0368, "Q6_K": 0.0181}
"""Bound on ||W - W_q||_F / ||W||_F for N(0, 1) weights of 64 rows of 1024 (seed 0). ggml's
reference quantisers give 0.2961, 0.1515, 0.0715, 0.0363, 0.0178 on these weights (measured
through llama-cpp-python 0.3.36; ours are the same bytes); each bound is theirs plus
about 1.5%, so a quantiser that drifted from ggml's fits would fail it."""


def _gaussian(rows: int = 64, cols: int = 1024, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def _read(data: np.ndarray, type_name: str, shape: tuple[int, int]) -> np.ndarray:
    return dequantize(data, GGMLQuantizationType[type_name]).reshape(shape)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("type_name", K_TYPES)
def test_gguf_reads_our_bytes_as_our_reconstruction(type_name):
    x = _gaussian() * 0.02
    x[3, 256:512] = 0.0  # an all-zero super-block
    x[5, :256] = 0.01  # a constant one
    x[7, 17] = 0.5  # an outlier
    blocks = quantize_k(x, type_name)
    data = pack(blocks)
    assert data.shape == (64 * 4, BLOCK_BYTES[type_name]) and data.dtype == np.uint8
    assert GGML_QUANT_SIZES[GGMLQuantizationType[type_name]] == (SUPER, BLOCK_BYTES[type_name])
    ours = reconstruct(blocks).reshape(x.shape)
    np.testing.assert_array_equal(_read(data.reshape(64, -1), type_name, x.shape), ours)
    assert not ours[3, 256:512].any()
    assert _rel(ours[5, :256], x[5, :256]) < 0.02  # a constant is nearly kept by every type
    assert _rel(ours, x) < GAUSSIAN_ERROR[type_name]


@pytest.mark.parametrize("type_name", K_TYPES)
def test_error_on_gaussian_weights_is_within_the_bound(type_name):
    x = _gaussian()
    assert _rel(_read(quantize_rows(x, type_name), type_name, x.shape), x) < GAUSSIAN_ERROR[type_name]


@pytest.mark.parametrize("type_name", K_TYPES)
def test_our_bytes_are_llama_cpp_s_on_the_committed_fixture(type_name):
    # llama.cpp's quantiser wrote these bytes; ours must give every one of them (no llama.cpp
    # needed). Its rows hold the edge cases: zero, constant, outlier, float16 scales that round to 0.
    with np.load(FIXTURE) as fixture:
        x, theirs = fixture["x"].astype(np.float32), fixture[type_name]
    ours = quantize_rows(x, type_name)
    assert ours.shape == theirs.shape
    differ = np.flatnonzero(
        ~(ours.reshape(-1, BLOCK_BYTES[type_name]) == theirs.reshape(-1, BLOCK_BYTES[type_name])).all(axis=1)
    )
    assert differ.size == 0, f"{differ.size} of {x.size // SUPER} super-blocks differ, first {differ[:5]}"


@pytest.mark.parametrize("type_name", K_TYPES)
def test_llama_cpp_s_quantiser_gives_our_bytes(type_name, ggml_quantize):
    # The same check live, on other weights: N(0, 1) and a trained-like scale.
    for x in (_gaussian(), _gaussian(seed=1) * 0.02):
        ours, theirs = quantize_rows(x, type_name), ggml_quantize(x, type_name)
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)


def test_bits_per_weight_are_ggml_s():
    bits = {name: BLOCK_BYTES[name] * 8 / SUPER for name in K_TYPES}
    assert bits == {"Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}


def test_bad_input_is_refused():
    with pytest.raises(
        ValueError, match=r"Q2_K needs rows of a multiple of 256 inputs, got shape \(4, 576\)"
    ):
        quantize_k(np.zeros((4, 576), np.float32), "Q2_K")
    with pytest.raises(ValueError, match="type_name must be one of"):
        quantize_k(np.zeros((4, 256), np.float32), "Q8_0")


def test_fits_by_hand():
    # Four levels 0, 1, 2, 3 times 0.5, shifted by -0.75: the affine fit recovers the grid.
    x = (np.tile(np.arange(4, dtype=np.float32), 4) * 0.5 - 0.75).reshape(1, 16)
    scale, the_min, codes = fit_affine(x, np.abs(x), 3, -0.5, 0.1, 15, True)
    assert scale[0] == pytest.approx(0.5) and the_min[0] == pytest.approx(0.75)
    np.testing.assert_array_equal(codes[0], np.tile(np.arange(4), 4))
    # Symmetric levels -4..3 times 0.25: both symmetric fits recover them (codes offset by nmax).
    y = (np.arange(-4, 4, dtype=np.float32).repeat(2) * 0.25).reshape(1, 16)
    s, c = fit_symmetric3(y, 4)
    assert s[0] == pytest.approx(0.25) and (c[0] - 4 == np.arange(-4, 4).repeat(2)).all()
    z = (np.arange(-32, 32, 4, dtype=np.float32) * 0.01).reshape(1, 16)
    s, c = fit_symmetric(z, 32)
    np.testing.assert_allclose(s[0] * (c[0] - 32), z[0], atol=1e-6)
    zero = np.zeros((1, 16), np.float32)
    assert fit_symmetric(zero, 32)[0][0] == 0 and fit_symmetric3(zero, 4)[0][0] == 0
