"""Exact k-bit packing of integer codes, for any k in 1..8.

Layout ("bit planes", per row): for a row of ``cols`` codes and ``bits`` planes, plane j
holds bit j of every code, eight codes to a byte, so a row costs exactly
``bits * ceil(cols / 8)`` bytes. A 3-bit row of 64 codes is 24 bytes, not the 25.6 of a
10-codes-in-32-bits scheme. Rows are packed independently, so a row (an embedding
vector, say) can be gathered from the packed tensor without unpacking the others.

Both functions are pure and work on any device; under ``torch.compile`` the unpack fuses
into the dequantisation that follows it.
"""

from __future__ import annotations

import torch

MIN_BITS = 1
MAX_BITS = 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def packed_row_bytes(cols: int, bits: int) -> int:
    """Bytes one packed row of ``cols`` codes takes at ``bits`` bits per code."""
    _check_bits(bits)
    return bits * ((cols + 7) // 8)


def packed_nbytes(rows: int, cols: int, bits: int) -> int:
    """Bytes a packed ``(rows, cols)`` code matrix takes; the memory model uses this too."""
    return rows * packed_row_bytes(cols, bits)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs unsigned integer codes of ``bits`` bits each.

    Args:
        codes: ``(..., cols)`` integer tensor with values in ``[0, 2**bits)``.
        bits: bits per code, 1..8.

    Returns:
        ``(..., bits * ceil(cols / 8))`` uint8 tensor (bit planes, see module docstring).

    Raises:
        ValueError: if ``bits`` is out of range or a code does not fit in ``bits`` bits.
    """
    _check_bits(bits)
    if codes.dtype.is_floating_point:
        raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, "
            f"got range [{int(codes.min())}, {int(codes.max())}]"
        )
    *lead, cols = codes.shape
    pad = (-cols) % 8
    c = codes.to(torch.uint8)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*lead, 1, -1, 8)  # (..., 1, cols/8, 8)
    planes = torch.arange(bits, device=c.device, dtype=torch.uint8).view(-1, 1, 1)
    bit = (c >> planes) & 1  # (..., bits, cols/8, 8)
    place = torch.arange(8, device=c.device, dtype=torch.uint8)
    packed = (bit << place).sum(dim=-1, dtype=torch.uint8)  # (..., bits, cols/8); bits don't overlap
    return packed.reshape(*lead, -1)


def unpack(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack`.

    Args:
        packed: ``(..., bits * ceil(cols / 8))`` uint8 tensor.
        bits: bits per code, 1..8.
        cols: number of codes per row before packing.

    Returns:
        ``(..., cols)`` uint8 codes.
    """
    _check_bits(bits)
    *lead, nbytes = packed.shape
    if nbytes != packed_row_bytes(cols, bits):
        raise ValueError(
            f"packed rows of {nbytes} bytes do not hold {cols} codes of {bits} bits "
            f"(expected {packed_row_bytes(cols, bits)} bytes)"
        )
    p = packed.reshape(*lead, bits, -1)  # (..., bits, cols/8)
    place = torch.arange(8, device=p.device, dtype=torch.uint8)
    # One OR per plane, unrolled: purely elementwise, so torch.compile fuses the whole
    # unpack (and the dequantisation after it) into one kernel.
    codes = (p[..., 0, :, None] >> place) & 1  # (..., cols/8, 8)
    for j in range(1, bits):
        codes = codes | (((p[..., j, :, None] >> place) & 1) << j)
    return codes.reshape(*lead, -1)[..., :cols]
