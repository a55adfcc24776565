"""llama.cpp's K-quants (Q2_K to Q6_K) written by us: quantise, pack as ggml's bytes, reconstruct.

``gguf`` (PyPI) reads K-quants but cannot write them, so these follow ggml's reference
quantisers (``quantize_row_q{2..6}_K_ref`` in ``ggml-quants.c``: what ``llama-quantize`` does
without an importance matrix), vectorised over all super-blocks at once. The scale fits are in
``kquant_fit``; this module turns them into super-blocks and bytes.

Notation (one super-block of 256 consecutive inputs of one row, cut into sub-blocks):
    Q2_K  16 x 16   W = d * sc * q - dmin * m    q in [0, 3];  sc, m 4-bit; d, dmin float16
    Q3_K  16 x 16   W = d * (sc - 32) * (q - 4)  q in [0, 7];  sc 6-bit;    d float16
    Q4_K   8 x 32   W = d * sc * q - dmin * m    q in [0, 15]; sc, m 6-bit; d, dmin float16
    Q5_K   8 x 32   the same with q in [0, 31]
    Q6_K  16 x 16   W = d * sc * (q - 32)        q in [0, 63]; sc int8;     d float16

Each type: fit a scale (and minimum) per sub-block, quantise those to the super-block's 4/6/8-bit
grid under a float16 ``d`` (and ``dmin``), then re-round every weight on the grid the stored
scales give. ``KBlocks`` holds the result before packing; ``reconstruct`` computes the weights
from it in the float32 order of ``gguf.quants.dequantize``, so the two agree bit for bit on the
packed bytes (``tests/export/test_kquants.py``).

Rows must be multiples of 256 inputs (``SUPER``); ``gguf_types`` falls back to a 32-block type
for other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qradaptor.export.kquant_fit import (
    F32,
    ZERO_GROUP,
    fit_affine,
    fit_symmetric,
    fit_symmetric3,
    nearest,
    ordered_sum,
)

SUPER = 256
"""Weights per K-quant super-block (ggml's QK_K)."""
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
"""The K-quant types written here."""
SUB_BLOCK = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}
"""Weights per sub-block of each type."""
BLOCK_BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
"""Bytes per super-block (ggml's ``block_q*_K``; 2.625, 3.4375, 4.5, 5.5, 6.5625 bits per weight)."""
_AFFINE = {  # code max, sub-block scale max, ggml's trial grid (rmin, rdelta, steps), absolute error
    "Q2_K": (3, 15, (-0.5, 0.1, 15), True),
    "Q4_K": (15, 63, (-1.0, 0.1, 20), False),
    "Q5_K": (31, 63, (-0.5, 0.1, 15), False),
}
_TINY = float(np.nextafter(F32(0), F32(1)))
"""The smallest positive float32: a magnitude at least this is not zero."""


@dataclass(frozen=True)
class KBlocks:
    """Super-blocks of one K type before packing (module docstring's notation)."""

    type_name: str
    """One of ``K_TYPES``."""
    d: np.ndarray
    """(blocks,) float16 super-block scale."""
    dmin: np.ndarray
    """(blocks,) float16 super-block scale of the minima; zeros for Q3_K and Q6_K."""
    scales: np.ndarray
    """(blocks, sub-blocks) int32 sub-block scales as stored (Q3_K: offset by 32; Q6_K: signed)."""
    mins: np.ndarray
    """(blocks, sub-blocks) int32 sub-block minima as stored; zeros for Q3_K and Q6_K."""
    codes: np.ndarray
    """(blocks, 256) uint8 codes as stored (Q3_K: offset by 4; Q6_K: offset by 32)."""


def quantize_k(x: np.ndarray, type_name: str) -> KBlocks:
    """``x`` as super-blocks of ``type_name`` (ggml's reference quantiser for that type).

    Args:
        x: (rows, cols) float weights, cols a multiple of 256.
        type_name: one of ``K_TYPES``.

    Raises:
        ValueError: for another type, or rows that are not a multiple of 256 inputs.
    """
    if type_name not in K_TYPES:
        raise ValueError(f"type_name must be one of {K_TYPES}, got {type_name!r}")
    if x.ndim != 2 or x.shape[1] % SUPER:
        raise ValueError(f"{type_name} needs rows of a multiple of {SUPER} inputs, got shape {x.shape}")
    blocks = np.ascontiguousarray(x, dtype=F32).reshape(-1, SUPER)  # (nb, 256)
    if type_name in _AFFINE:
        return _affine(blocks, type_name)
    return _q3_k(blocks) if type_name == "Q3_K" else _q6_k(blocks)


def _affine(x: np.ndarray, type_name: str) -> KBlocks:
    """Q2_K, Q4_K, Q5_K: a fitted scale and minimum per sub-block, both on a grid under d, dmin."""
    nmax, smax, (rmin, rdelta, steps), use_mad = _AFFINE[type_name]
    nb, size = x.shape[0], SUB_BLOCK[type_name]
    sub = x.reshape(-1, size)  # (nb * subs, size)
    if type_name == "Q2_K":
        weights = np.abs(sub)
    else:  # Q4_K, Q5_K: the sub-block's RMS plus each magnitude
        weights = np.sqrt(ordered_sum(sub * sub) / F32(size))[:, None] + np.abs(sub)
    scale, the_min, codes = fit_affine(sub, weights, nmax, rmin, rdelta, steps, use_mad)
    scale, the_min = scale.reshape(nb, -1), the_min.reshape(nb, -1)
    d, ls = _unsigned_grid(scale, smax)
    dmin, lm = _unsigned_grid(the_min, smax)
    step = d.astype(F32)[:, None] * ls.astype(F32)  # (nb, subs)
    offset = dmin.astype(F32)[:, None] * lm.astype(F32)
    requant = np.clip(
        nearest((sub + offset.reshape(-1, 1)) / np.where(step == 0, 1, step).reshape(-1, 1)), 0, nmax
    )
    codes = np.where(step.reshape(-1, 1) != 0, requant, codes)  # ggml keeps the fit's codes where d * sc = 0
    return KBlocks(type_name, d, dmin, ls, lm, codes.reshape(nb, SUPER).astype(np.uint8))


def _unsigned_grid(values: np.ndarray, smax: int) -> tuple[np.ndarray, np.ndarray]:
    """(d float16, codes) with values ~ d * codes, codes in [0, smax], d = max / smax."""
    top = np.maximum(values.max(axis=1), F32(0))  # (nb,)
    inverse = np.where(top > 0, F32(smax) / np.where(top > 0, top, 1), F32(0)).astype(F32)
    codes = np.clip(nearest(inverse[:, None] * values), 0, smax)  # clip: a guard, ggml's fits stay inside
    return (top / F32(smax)).astype(np.float16), codes


def _signed_grid(
    scale: np.ndarray, levels: int, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d float16, its float32 value, codes in [-levels, levels - 1], live) with the sub-block
    scale of largest magnitude at code -levels, as ggml's Q3_K and Q6_K do. A super-block is
    live when that scale's magnitude is at least ``floor``; else d and the codes are 0."""
    at = np.abs(scale).argmax(axis=1)
    peak = np.take_along_axis(scale, at[:, None], axis=1)[:, 0]  # (nb,) signed
    live = np.abs(peak) >= floor
    iscale = np.where(live, F32(-levels) / np.where(live, peak, 1), F32(0)).astype(F32)
    codes = np.clip(nearest(iscale[:, None] * scale), -levels, levels - 1)
    d = np.where(live, F32(1) / np.where(live, iscale, 1), F32(0)).astype(np.float16)
    return d, d.astype(F32), codes, live


def _q3_k(x: np.ndarray) -> KBlocks:
    """Q3_K: symmetric 3-bit codes, a 6-bit signed scale per 16 weights under d."""
    nb = x.shape[0]
    sub = x.reshape(-1, 16)
    scale, codes = fit_symmetric3(sub, 4)
    d, d32, sc, live = _signed_grid(scale.reshape(nb, -1), 32, _TINY)  # ggml: max_scale != 0
    step = (d32[:, None] * sc.astype(F32)).reshape(-1, 1)  # (nb * 16, 1)
    requant = np.clip(nearest(sub / np.where(step == 0, 1, step)), -4, 3) + 4
    codes = np.where(step != 0, requant, codes)
    stored = np.where(live[:, None], sc + 32, 0)  # ggml leaves a dead super-block's scale bytes 0
    zero = np.zeros_like(sc)
    return KBlocks(
        "Q3_K", d, np.zeros(nb, np.float16), stored, zero, codes.reshape(nb, SUPER).astype(np.uint8)
    )


def _q6_k(x: np.ndarray) -> KBlocks:
    """Q6_K: symmetric 6-bit codes, an int8 scale per 16 weights under d."""
    nb = x.shape[0]
    sub = x.reshape(-1, 16)
    scale, codes = fit_symmetric(sub, 32)
    d, d32, sc, live = _signed_grid(scale.reshape(nb, -1), 128, ZERO_GROUP)  # ggml: GROUP_MAX_EPS
    step = (d32[:, None] * sc.astype(F32)).reshape(-1, 1)
    requant = np.clip(nearest(sub / np.where(step == 0, 1, step)), -32, 31) + 32
    codes = np.where(step != 0, requant, codes).reshape(nb, SUPER)
    # ggml writes a super-block whose scales are all below GROUP_MAX_EPS as zero bytes; one whose
    # d merely rounds to 0 in float16 keeps the fit's codes (both read back as zeros).
    codes = np.where(live[:, None], codes, 0)
    zero = np.zeros_like(sc)
    return KBlocks("Q6_K", d, np.zeros(nb, np.float16), sc, zero, codes.astype(np.uint8))


def reconstruct(blocks: KBlocks) -> np.ndarray:
    """The weights ``blocks`` stand for, (blocks, 256) float32, in ``gguf.quants``' float32 order."""
    name, nb = blocks.type_name, blocks.codes.shape[0]
    size = SUB_BLOCK[name]
    d = blocks.d.astype(F32)[:, None]
    q = blocks.codes.reshape(nb, -1, size).astype(F32)  # (nb, subs, size)
    if name == "Q3_K":
        step = d * (blocks.scales - 32).astype(F32)
        return (step[..., None] * (q - F32(4))).reshape(nb, SUPER)
    if name == "Q6_K":
        step = d * blocks.scales.astype(F32)
        return (step[..., None] * (q - F32(32))).reshape(nb, SUPER)
    step = d * blocks.scales.astype(F32)
    offset = blocks.dmin.astype(F32)[:, None] * blocks.mins.astype(F32)
    return (step[..., None] * q - offset[..., None]).reshape(nb, SUPER)


def _bit_planes(bits: np.ndarray) -> np.ndarray:
    """(..., planes, n) of 0/1 -> (..., n) bytes with plane p in bit p."""
    shifts = np.arange(bits.shape[-2], dtype=np.uint8).reshape(-1, 1)
    return (bits.astype(np.uint8) << shifts).sum(axis=-2, dtype=np.uint8)


def _crumbs(codes: np.ndarray) -> np.ndarray:
    """(nb, 256) 2-bit values -> (nb, 64) bytes: byte l of half h holds h*128 + 32 j + l at bits 2j."""
    nb = codes.shape[0]
    parts = codes.reshape(nb, 2, 4, 32).astype(np.uint8) & 3
    return sum(parts[:, :, j] << (2 * j) for j in range(4)).astype(np.uint8).reshape(nb, 64)


def _scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and minima as Q4_K/Q5_K's 12 bytes (ggml's ``get_scale_min_k4`` read back)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    first = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    second = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    third = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=1)


def _halves(x: np.ndarray) -> np.ndarray:
    """(nb,) float16 -> (nb, 2) bytes."""
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def pack(blocks: KBlocks) -> np.ndarray:
    """``blocks`` as ggml's bytes, (blocks, ``BLOCK_BYTES``) uint8 (``gguf.quants`` reads them)."""
    name, q = blocks.type_name, blocks.codes
    nb = q.shape[0]
    if name == "Q2_K":
        scales = (blocks.scales | (blocks.mins << 4)).astype(np.uint8)
        parts = [scales, _crumbs(q), _halves(blocks.d), _halves(blocks.dmin)]
    elif name == "Q3_K":
        hmask = _bit_planes(q.reshape(nb, 8, 32) >> 2 & 1)  # bit b of byte m: code b * 32 + m
        ls = blocks.scales.astype(np.uint8)  # (nb, 16) in [0, 63]
        low = (ls[:, :8] & 0x0F) | ((ls[:, 8:] & 0x0F) << 4)
        high = sum((ls.reshape(nb, 4, 4)[:, g] >> 4) << (2 * g) for g in range(4)).astype(np.uint8)
        parts = [hmask, _crumbs(q & 3), low, high, _halves(blocks.d)]
    elif name in ("Q4_K", "Q5_K"):
        pairs = q.reshape(nb, 4, 2, 32)  # chunk c of 64: low nibbles c*64 + l, high c*64 + 32 + l
        qs = ((pairs[:, :, 0] & 0x0F) | ((pairs[:, :, 1] & 0x0F) << 4)).reshape(nb, 128)
        head = [_halves(blocks.d), _halves(blocks.dmin), _scales_k4(blocks.scales, blocks.mins)]
        fifth = [_bit_planes((pairs >> 4 & 1).reshape(nb, 8, 32))] if name == "Q5_K" else []
        parts = head + fifth + [qs]
    else:  # Q6_K
        quarters = q.reshape(nb, 2, 4, 32)  # half h, quarter j: codes h*128 + 32 j + l
        ql = ((quarters[:, :, 0:2] & 0x0F) | ((quarters[:, :, 2:4] & 0x0F) << 4)).reshape(nb, 128)
        qh = sum((quarters[:, :, j] >> 4) << (2 * j) for j in range(4)).astype(np.uint8).reshape(nb, 64)
        parts = [ql, qh, blocks.scales.astype(np.int8).view(np.uint8), _halves(blocks.d)]
    out = np.concatenate([p.astype(np.uint8) for p in parts], axis=1)
    assert out.shape == (nb, BLOCK_BYTES[name]), (name, out.shape)
    return out


def quantize_rows(x: np.ndarray, type_name: str) -> np.ndarray:
    """``x`` (rows, cols) as GGUF data of ``type_name``: (rows, cols / 256 * block bytes) uint8."""
    return pack(quantize_k(x, type_name)).reshape(x.shape[0], -1)
