from __future__ import annotations

import pytest
import torch

from qradaptor.quant.bitpack import pack, packed_nbytes, unpack


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 64), (2, 3, 17), (4, 576)])
def test_round_trip_every_bit_width_and_odd_shapes(bits: int, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, shape, generator=gen, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape[-1] == bits * ((shape[-1] + 7) // 8)
    assert torch.equal(unpack(packed, bits, shape[-1]), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_exact_size_is_bits_per_code(bits: int) -> None:
    codes = torch.zeros(16, 64, dtype=torch.uint8)
    assert pack(codes, bits).numel() == 16 * 64 * bits // 8 == packed_nbytes(16, 64, bits)


def test_known_layout() -> None:
    # codes 1..7,0 at 3 bits: plane 0 = 1,0,1,0,1,0,1,0 -> 0b01010101 = 85, etc.
    packed = pack(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]]), 3)
    assert packed.tolist() == [[85, 102, 120]]


def test_rejects_codes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\] for bits=2, got range \[0, 4\]"):
        pack(torch.tensor([[0, 4]]), 2)


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_rejects_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="bits must be an integer in 1..8"):
        pack(torch.zeros(1, 8, dtype=torch.uint8), bits)


def test_unpack_checks_size() -> None:
    with pytest.raises(ValueError, match="do not hold 64 codes of 4 bits"):
        unpack(torch.zeros(1, 10, dtype=torch.uint8), 4, 64)
