"""Group-wise weight quantisation: ``quantize`` and ``dequantize``.

Notation (one output row, one group of ``group_size`` input columns):
    W      real weights of the group, shape (g,)
    s, z   scale and zero point of the group, stored in float16
    q      codes, integers in [0, 2**bits - 1]
    W_hat  = (q - z) * s, the dequantised weights

Two fits of (s, z, q):
    "rtn"  min-max round-to-nearest: s = (max - min) / (2**bits - 1), z = -min / s.
    "hqq"  half-quadratic optimisation in the manner of HQQ (Badri & Shaji, 2023): keep s
           from min-max and find z minimising the l_p error (p < 1, robust to the outliers
           of heavy-tailed weights) by alternating a generalised soft-threshold of the
           residual with a closed-form update of z; then, with the codes fixed, a
           least-squares refit of (s, z) per group that lowers the plain l2 error.
The zero point is a real number, not rounded to an integer: it costs the same 16 bits and
gives a better fit. With ``double_quant`` the fitted scales and zeros are stored as 8-bit codes
(``metaquant``), and the weight codes are computed against those stored values.

A third fit stores no zero at all:
    "symmetric"  llama.cpp's signed-absmax rounding (``symmetric``): a float16 scale per group,
           W_hat = (q - 2**(bits - 1)) * s. At 4, 5 and 8 bits with group 32 its codes are
           llama.cpp's Q4_0, Q5_0 and Q8_0 blocks exactly; it takes 2..8 bits and no
           ``double_quant`` (there is one scale per group and no zero to pair it with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from qradaptor.quant.bitpack import MAX_BITS, MIN_BITS, pack, unpack
from qradaptor.quant.metaquant import dequantize_meta, float16_toward, quantize_meta
from qradaptor.quant.symmetric import SYMMETRIC_MIN_BITS, code_midpoint, symmetric_fit

QuantMethod = Literal["rtn", "hqq", "symmetric"]
QUANT_METHODS: tuple[str, ...] = ("rtn", "hqq", "symmetric")
SYMMETRIC = "symmetric"
"""The method that stores no zero point (``symmetric``)."""
META_DTYPE = torch.float16
"""Storage type of scales and zero points (16 bits each, counted by the memory model)."""


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight matrix stored as packed k-bit codes plus per-group scale and (asymmetric) zero."""

    packed: torch.Tensor
    """(rows, bits * ceil(cols / 8)) uint8 bit planes, see ``bitpack``."""
    scale: torch.Tensor
    """(rows, cols // group_size) float16, or uint8 codes when double-quantised."""
    zero: torch.Tensor | None
    """(rows, cols // group_size) float16, or uint8 codes when double-quantised; None when
    symmetric: every group's zero is then the code midpoint 2**(bits - 1), stored nowhere."""
    shape: tuple[int, int]
    """(rows, cols) of the original weight."""
    bits: int
    """Bits per code, 1..8."""
    group_size: int
    """Input columns sharing one scale and zero."""
    scale_meta: torch.Tensor | None = None
    """(ceil(groups / META_BLOCK), 2) float16 (step, offset) of the scale codes; None: float16 scales."""
    zero_meta: torch.Tensor | None = None
    """The same for the zero codes."""

    @property
    def symmetric(self) -> bool:
        """Whether the fit has no stored zero (method "symmetric": W_hat = (q - 2**(bits-1)) * s)."""
        return self.zero is None

    @property
    def double_quant(self) -> bool:
        """Whether scales and zeros are stored as 8-bit codes (``metaquant``)."""
        return self.scale_meta is not None

    def parts(self) -> tuple[torch.Tensor, ...]:
        """Every stored tensor: codes, scales, zeros, and the metadata's (step, offset) blocks."""
        meta = () if self.scale_meta is None or self.zero_meta is None else (self.scale_meta, self.zero_meta)
        zero = () if self.zero is None else (self.zero,)
        return (self.packed, self.scale, *zero, *meta)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (codes, scales, zeros, double quantisation's blocks)."""
        return sum(t.numel() * t.element_size() for t in self.parts())

    def metadata(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) as float16 (rows, groups), dequantised when double-quantised.

        A symmetric fit's zero is made here, the midpoint in every group (exact in float16), so
        that code written for (q - z) * s reads every fit alike.
        """
        if self.zero is None:
            return self.scale, torch.full_like(self.scale, code_midpoint(self.bits))
        if self.scale_meta is None or self.zero_meta is None:
            return self.scale, self.zero
        return dequantize_meta(self.scale, self.scale_meta), dequantize_meta(self.zero, self.zero_meta)

    def copy(self) -> QuantizedTensor:
        """The same fit in new storage (every tensor cloned)."""
        clone = [None if t is None else t.clone() for t in (self.scale_meta, self.zero_meta)]
        return QuantizedTensor(
            self.packed.clone(),
            self.scale.clone(),
            None if self.zero is None else self.zero.clone(),
            self.shape,
            self.bits,
            self.group_size,
            *clone,
        )


def check_group_size(cols: int, group_size: int, *, where: str = "weight") -> None:
    """Raises a ValueError unless ``group_size`` divides ``cols``.

    Padding a group would make part of a layer's storage hold nothing; we refuse instead
    and say which group sizes would work.
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if cols % group_size:
        options = [g for g in (32, 64, 128, 256) if cols % g == 0] or [
            d for d in range(1, min(cols, 256) + 1) if cols % d == 0
        ][-4:]
        raise ValueError(
            f"group_size={group_size} does not divide the input size {cols} of {where}; "
            f"choose a group size that divides it, e.g. {options}"
        )


def _check_args(weight: torch.Tensor, bits: int, group_size: int, method: str, double_quant: bool) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (rows, cols), got shape {tuple(weight.shape)}")
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if method not in QUANT_METHODS:
        raise ValueError(f"method must be one of {QUANT_METHODS}, got {method!r}")
    if method == SYMMETRIC:
        check_symmetric(bits, double_quant)
    check_group_size(weight.shape[1], group_size)


def check_symmetric(bits: int | None, double_quant: bool, *, where: str = "method 'symmetric'") -> None:
    """Raises ValueError where the symmetric fit cannot serve: one bit, or ``double_quant``.

    ``bits`` None: the bit-widths are not known yet (checked where they are), only ``double_quant``.
    """
    if bits is not None and bits < SYMMETRIC_MIN_BITS:
        raise ValueError(
            f"{where} needs bits >= {SYMMETRIC_MIN_BITS} (one bit holds only the extreme and 0), got {bits}"
        )
    if double_quant:
        raise ValueError(
            f"{where} stores one float16 scale per group and no zero: double_quant (8-bit scales "
            "and zeros) applies to rtn and hqq only"
        )


def _minmax_fit(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, z) of the min-max fit of groups ``w`` (n, g), each of shape (n, 1)."""
    lo = w.amin(dim=1, keepdim=True)
    hi = w.amax(dim=1, keepdim=True)
    scale = ((hi - lo) / qmax).clamp_min(1e-8)
    return scale, -lo / scale


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.round(w / scale + zero).clamp_(0, qmax)


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-threshold: the proximal step of the l_p (p < 1) error term.

    Returns ``sign(x) * relu(|x| - |x|**(p - 1) / beta)``. That is nonzero only where
    ``|x|**(2 - p) > 1 / beta``; when no entry comes near that cutoff (most groups at 4 and
    8 bits, whose residuals are far below it) the result is all zeros and the costly
    ``pow`` is skipped. The 0.999 margin keeps the skip exact despite float rounding.
    """
    a = x.abs()
    if not bool((a > 0.999 * beta ** (-1.0 / (2.0 - p))).any()):
        return torch.zeros_like(x)
    # copysign is several times faster than sign(x) * ... on CPU and gives the same values.
    return torch.copysign(torch.relu(a - a.clamp_min(1e-12).pow(p - 1) / beta), x)


def _hqq_fit(
    w: torch.Tensor,
    qmax: int,
    *,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-quadratic fit of the zero point with the scale fixed, then an l2 refit.

    Each iteration computes the codes and the residual ``w - (q - z) * s`` once: the ones
    that score a zero point are the ones the next iteration starts from (an earlier version
    computed both twice; the results are bit-identical, see tests/quant/test_quantizer.py).
    """
    scale, zero = _minmax_fit(w, qmax)
    w_scaled = w / scale  # (n, g); the scale stays fixed until the refit
    q = torch.round(w_scaled + zero).clamp_(0, qmax)
    error = w - (q - zero) * scale  # (n, g) residual of the current zero point
    best_zero, best_q, best_err = zero, q, float("inf")
    for _ in range(iters):
        residual = _shrink_lp(error, beta, p)
        zero = (q - (w - residual) / scale).mean(dim=1, keepdim=True)
        beta *= kappa
        q = torch.round(w_scaled + zero).clamp_(0, qmax)
        error = w - (q - zero) * scale
        err = float(error.abs().mean())
        if err >= best_err:  # HQQ's early stop: the l_p iterations can start to drift
            break
        best_zero, best_q, best_err = zero, q, err
    return least_squares_refit(w, best_q, scale, best_zero)


def least_squares_refit(
    w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, z) per group minimising ||w - (q - z) s||_2 with the codes q fixed, where it helps.

    W ~ s*q - s*z is linear in (s, -s*z), so each group's fit is a 1-D regression of w on q.
    A group keeps its (scale, zero) where its codes are all equal or the refit is no better.
    """
    q_mean, w_mean = q.mean(dim=1, keepdim=True), w.mean(dim=1, keepdim=True)
    q_var = ((q - q_mean) ** 2).mean(dim=1, keepdim=True)
    cov = ((q - q_mean) * (w - w_mean)).mean(dim=1, keepdim=True)
    ok = q_var > 1e-12  # a group whose codes are all equal keeps its min-max fit
    new_scale = torch.where(ok, cov / q_var.clamp_min(1e-12), scale)
    ok &= new_scale > 1e-8
    new_zero = q_mean - w_mean / new_scale.clamp_min(1e-8)
    before = ((w - (q - zero) * scale) ** 2).sum(dim=1, keepdim=True)
    after = ((w - (q - new_zero) * new_scale) ** 2).sum(dim=1, keepdim=True)
    ok &= after < before
    return torch.where(ok, new_scale, scale), torch.where(ok, new_zero, zero)


@torch.no_grad()
def quantize(
    weight: torch.Tensor,
    bits: int,
    group_size: int = 64,
    method: QuantMethod = "hqq",
    *,
    double_quant: bool = False,
) -> QuantizedTensor:
    """Quantises a weight matrix group-wise along its input dimension.

    Args:
        weight: (rows, cols) float tensor, ``nn.Linear`` layout (out_features, in_features).
        bits: bits per code, 1..8.
        group_size: input columns per (scale, zero) pair; must divide ``cols``.
        method: "rtn" (min-max round-to-nearest), "hqq" (half-quadratic fit) or "symmetric"
            (llama.cpp's signed-absmax rounding, no zero point; bits 2..8).
        double_quant: store scales and zeros as 8-bit codes (``metaquant``) instead of float16
            (rtn and hqq only).

    Returns:
        The packed codes with their scales and zeros (float16, or 8-bit codes and blocks;
        no zeros when symmetric).

    Raises:
        ValueError: on a bad ``bits``, ``group_size``, ``method`` or weight shape, or a
            symmetric fit at one bit or with ``double_quant``.
    """
    _check_args(weight, bits, group_size, method, double_quant)
    rows, cols = weight.shape
    qmax = (1 << bits) - 1
    w = weight.detach().float().reshape(-1, group_size)  # (rows * groups, g)
    meta_shape = (rows, cols // group_size)
    if method == SYMMETRIC:
        d, codes = symmetric_fit(w, bits)  # (rows * groups, 1), (rows * groups, g)
        scale16, zero16 = d.to(META_DTYPE).reshape(meta_shape), None
    else:
        scale, zero = _minmax_fit(w, qmax) if method == "rtn" else _hqq_fit(w, qmax)
        # Round the metadata to its storage type before computing codes, so the codes are the
        # best ones for the scale and zero that dequantisation will actually see.
        scale16, zero16 = (t.reshape(meta_shape) for t in _float16_metadata(scale, zero))
        if double_quant:
            return _double_quantised(w, scale16, zero16, bits, group_size, (rows, cols))
        codes = _codes(w, scale16.float().reshape(-1, 1), zero16.float().reshape(-1, 1), qmax)
    return QuantizedTensor(
        pack(codes.to(torch.uint8).reshape(rows, cols), bits), scale16, zero16, (rows, cols), bits, group_size
    )


def _float16_metadata(scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fit's scales and zeros (n, 1) in their float16 storage.

    Scales round to nearest. One below float16's least normal (6.1e-5: an 8-bit group narrower
    than 0.016, a 4-bit one narrower than 9e-4) rounds up to a subnormal float16 instead, at least
    2^-24, and its zero moves so that the group's real offset, zero x scale, stays where the fit
    put it. (Clamped to the least normal, as until 2026-12-06, such a group got a grid many times
    too coarse and a zero fitted for another scale: weights of std 1e-4 came back with 13x the
    8-bit error of the same weights scaled up.) Groups in the normal range are untouched.
    """
    scale16 = scale.to(META_DTYPE)
    small = scale < torch.finfo(META_DTYPE).tiny
    if bool(small.any()):
        up = float16_toward(scale, down=False).clamp_min(2.0**-24)
        scale16 = torch.where(small, up.to(META_DTYPE), scale16)
        zero = torch.where(small, zero * scale / scale16.float(), zero)
    return scale16, zero.to(META_DTYPE)


def _double_quantised(
    w: torch.Tensor,
    scale16: torch.Tensor,
    zero16: torch.Tensor,
    bits: int,
    group_size: int,
    shape: tuple[int, int],
) -> QuantizedTensor:
    """``w`` (rows * groups, g) stored with its float16 scales and zeros as 8-bit codes
    (``metaquant``), its weight codes computed against those stored values."""
    (scale_codes, scale_meta), (zero_codes, zero_meta) = quantize_meta(scale16), quantize_meta(zero16)
    # Each dequantised scale is >= its block's offset, the least float16 scale: positive.
    scale_hat = dequantize_meta(scale_codes, scale_meta).float().reshape(-1, 1)
    zero_hat = dequantize_meta(zero_codes, zero_meta).float().reshape(-1, 1)
    codes = _codes(w, scale_hat, zero_hat, (1 << bits) - 1).to(torch.uint8).reshape(shape)
    return QuantizedTensor(
        pack(codes, bits), scale_codes, zero_codes, shape, bits, group_size, scale_meta, zero_meta
    )


def dequantize_parts(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    cols: int,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantises packed rows: ``(q - z) * s`` per group, in ``dtype``.

    Works on any leading shape, so gathered rows (an embedding lookup) dequantise too.
    ``zero`` None is a symmetric fit: z is the code midpoint 2**(bits - 1) in every group.

    Returns:
        (..., cols) tensor of ``dtype``.
    """
    codes = unpack(packed, bits, cols)  # (..., cols) uint8
    lead = codes.shape[:-1]
    q = codes.reshape(*lead, cols // group_size, group_size).float()
    # In float32, rounded once at the end: a fused kernel and the eager ops then agree
    # bit for bit (in bf16 the eager path would round (q - z) before the multiply).
    z = float(code_midpoint(bits)) if zero is None else zero.float().unsqueeze(-1)
    w = (q - z) * scale.float().unsqueeze(-1)
    return w.reshape(*lead, cols).to(dtype)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize` up to the quantisation error; (rows, cols) of ``dtype``."""
    scale, zero = qt.metadata() if not qt.symmetric else (qt.scale, None)
    return dequantize_parts(qt.packed, scale, zero, qt.bits, qt.shape[1], qt.group_size, dtype)


def relative_error(weight: torch.Tensor, qt: QuantizedTensor) -> float:
    """``||W - W_hat||_F / ||W||_F``, the figure the reconstruction benchmark reports."""
    w = weight.detach().float()
    return float((w - dequantize(qt)).norm() / w.norm().clamp_min(1e-30))
