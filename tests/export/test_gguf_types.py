"""Our codes as GGUF blocks: read back by gguf's own dequantiser, the codes unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qradaptor.export.gguf_types import (
    check_gguf_plan,
    codes_to_blocks,
    dequantize_blocks,
    gguf_type,
    holds_codes,
    llama_rows,
    llama_rows_codes,
    row_type,
    type_map,
)
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.bitpack import unpack
from qradaptor.quant.quantizer import dequantize, quantize


def _weight(rows: int = 24, cols: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * 0.05


def _gguf_codes(blocks: np.ndarray, type_name: str) -> np.ndarray:
    """The codes stored in Q4_1/Q5_1 blocks, (blocks, 32), decoded by hand from the layout."""
    flat = blocks.reshape(-1, 20 if type_name == "Q4_1" else 24)
    qs = flat[:, -16:]
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # elements 0..15, then 16..31
    if type_name == "Q4_1":
        return low
    high = np.unpackbits(flat[:, 4:8], axis=1, bitorder="little")  # bit j: element j's fifth bit
    return low | (high << 4)


@pytest.mark.parametrize(
    ("bits", "group_size", "method", "type_name", "double_quant"),
    [
        (4, 32, "rtn", "Q4_1", False),
        (4, 64, "hqq", "Q4_1", False),
        (3, 128, "rtn", "Q4_1", True),
        (2, 32, "hqq", "Q4_1", False),
        (5, 32, "rtn", "Q5_1", False),
        (5, 64, "hqq", "Q5_1", True),
        (3, 32, "rtn", "Q5_1", False),
    ],
)
def test_codes_are_written_unchanged_and_dequantise_alike(bits, group_size, method, type_name, double_quant):
    qt = quantize(_weight(), bits, group_size, method, double_quant=double_quant)
    blocks = codes_to_blocks(qt, type_name)
    assert blocks.shape == (24, 128 // 32 * (20 if type_name == "Q4_1" else 24)) and blocks.dtype == np.uint8
    ours = unpack(qt.packed, bits, 128).reshape(-1, 32).numpy()
    np.testing.assert_array_equal(_gguf_codes(blocks, type_name), ours)
    theirs, mine = dequantize_blocks(blocks, type_name, (24, 128)), dequantize(qt)
    # The only change is the block offset m = -z * s rounded to float16: at most half an ulp of it.
    scale, zero = qt.metadata()
    m = (-zero.float() * scale.float()).abs().repeat_interleave(group_size, dim=1)
    assert bool(((theirs - mine).abs() <= m * 2.0**-11 + 1e-7).all())
    assert float((theirs - mine).norm() / mine.norm()) < 1e-3


def test_codes_that_do_not_fit_are_refused():
    assert not any(holds_codes(*case) for case in [("Q4_1", 5, 32), ("Q4_1", 4, 16), ("Q8_0", 8, 32)])
    with pytest.raises(ValueError, match="Q4_1 cannot hold 5-bit codes at group size 32"):
        codes_to_blocks(quantize(_weight(), 5, 32, "rtn"), "Q4_1")
    with pytest.raises(ValueError, match="group size 16"):
        codes_to_blocks(quantize(_weight(), 4, 16, "rtn"), "Q4_1")


def test_the_mapping_keeps_the_plan_s_bits():
    assert [gguf_type(b) for b in range(2, 9)] == ["Q2_K", "Q4_1", "Q4_1", "Q5_1", "Q6_K", "Q8_0", "Q8_0"]
    with pytest.raises(ValueError, match="blk.0 has 1 bits, which have no GGUF type"):
        gguf_type(1, where="blk.0")
    types = type_map({4: "Q4_K", 2: "Q4_1"})
    assert gguf_type(4, types=types) == "Q4_K" and gguf_type(2, types=types) == "Q4_1"
    assert gguf_type(3, types=types) == "Q4_1"  # Q3_K only when asked: it cost +78% perplexity
    assert gguf_type(3, types=type_map({3: "Q3_K"})) == "Q3_K"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({1: "Q2_K"}, "1 bits have no GGUF type"),
        (
            {4: "Q2_K"},
            "4-bit weights can be written as Q4_1 or Q4_K, or a wider type for a merged adapter: "
            "Q5_1, Q5_K, Q6_K, Q8_0, F16; got 'Q2_K'",
        ),
        ({8: "Q6_K"}, "8-bit weights can be written as Q8_0, or a wider type for a merged adapter: F16; got"),
        ({5: "Q4_1"}, "5-bit weights can be written as Q5_1 or Q5_K, or a wider .* Q6_K, Q8_0, F16; got"),
    ],
)
def test_a_type_that_cannot_hold_the_bits_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        type_map(overrides)


def test_any_width_may_pick_a_wider_type_for_a_merged_adapter():
    types = type_map({3: "Q5_1", 4: "Q8_0", 8: "F16", 6: "F16"})
    assert [types[b] for b in (3, 4, 6, 8)] == ["Q5_1", "Q8_0", "F16", "F16"]
    assert type_map({4: "Q5_0", 2: "Q6_K"}, "symmetric")[4] == "Q5_0"
    with pytest.raises(ValueError, match="wider type for a merged adapter: Q5_0, Q5_K, Q6_K, Q8_0, F16"):
        type_map({4: "Q5_1"}, "symmetric")  # a symmetric plan's family has no Q5_1
    # only wider than the default: 6-bit weights (Q6_K, 6.5625) cannot pick Q5_1 (6.0)
    with pytest.raises(ValueError, match="6-bit weights can be written as Q6_K or Q8_0, or a wider"):
        type_map({6: "Q5_1"})


def test_k_quants_fall_back_for_rows_not_a_multiple_of_256():
    assert row_type("Q2_K", 1536) == ("Q2_K", "")
    assert row_type("Q4_1", 576) == ("Q4_1", "")
    for planned, fallback in [
        ("Q2_K", "Q4_1"),
        ("Q3_K", "Q4_1"),
        ("Q4_K", "Q4_1"),
        ("Q5_K", "Q5_1"),
        ("Q6_K", "Q8_0"),
    ]:
        written, why = row_type(planned, 576)
        assert (
            written == fallback
            and why == f"{planned} needs rows of a multiple of 256 inputs, these have 576: {fallback}"
        )


def test_llama_rows_interleaves_each_head_halves():
    x = torch.arange(8).reshape(8, 1)
    assert llama_rows(x, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    qt = quantize(_weight(rows=32), 3, 64, "hqq", double_quant=True)
    assert torch.equal(dequantize(llama_rows_codes(qt, 4)), llama_rows(dequantize(qt), 4))


def test_plan_check_names_the_layer_and_the_rule(llama_factory):
    structure = inspect_model(llama_factory())
    check_gguf_plan(Plan.from_lists([2, 8, 16], [0, 0, 0], group_size=32), structure)
    with pytest.raises(ValueError, match=r"model.layers.1.self_attn.q_proj and 6 more has 1 bits"):
        check_gguf_plan(Plan.from_lists([4, 1, 16], [0, 0, 0], group_size=32), structure)
    ragged = inspect_model(llama_factory(hidden_size=48, intermediate_size=96, num_attention_heads=4))
    with pytest.raises(ValueError, match="32 inputs; model.layers.0.self_attn.q_proj has rows of 48"):
        check_gguf_plan(Plan.from_lists([4, 16, 16], [0, 0, 0], group_size=16), ragged)


def _heavy_tailed(rows: int = 24, cols: int = 256, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # StudentT samples from the global generator
    return torch.distributions.StudentT(3.0).sample((rows, cols)) * 0.02


@pytest.mark.parametrize(("bits", "type_name"), [(4, "Q4_0"), (5, "Q5_0"), (8, "Q8_0")])
@pytest.mark.parametrize("make", [_weight, _heavy_tailed], ids=["normal", "heavy-tailed"])
def test_symmetric_fit_is_llama_cpp_s_blocks_byte_for_byte(bits, type_name, make):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    w = make()
    qt = quantize(w, bits, 32, "symmetric")
    ours = codes_to_blocks(qt, type_name)
    theirs = gguf_quantize(w.numpy(), GGMLQuantizationType[type_name])
    assert ours.dtype == theirs.dtype == np.uint8 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    read = dequantize_blocks(ours, type_name, tuple(w.shape))
    assert torch.equal(read.view(torch.int32), dequantize(qt).view(torch.int32))  # bit for bit


@pytest.mark.parametrize(
    ("bits", "group_size", "type_name"),
    [
        (2, 32, "Q4_0"),
        (3, 64, "Q4_0"),
        (4, 128, "Q4_0"),
        (3, 32, "Q5_0"),
        (5, 64, "Q5_0"),
        (6, 32, "Q8_0"),
        (4, 64, "Q8_0"),
    ],
)
def test_symmetric_codes_of_other_widths_and_groups_dequantise_bit_for_bit(bits, group_size, type_name):
    # Codes move to the type's midpoint (an integer shift) and d = s: nothing is rounded.
    qt = quantize(_heavy_tailed(), bits, group_size, "symmetric")
    assert holds_codes(type_name, bits, group_size, symmetric=True)
    read = dequantize_blocks(codes_to_blocks(qt, type_name), type_name, (24, 256))
    assert torch.equal(read.view(torch.int32), dequantize(qt).view(torch.int32))


def test_symmetric_types_and_refusals():
    sym = type_map({}, "symmetric")
    assert [sym[b] for b in range(2, 9)] == ["Q2_K", "Q4_0", "Q4_0", "Q5_0", "Q6_K", "Q8_0", "Q8_0"]
    assert type_map({2: "Q4_0", 6: "Q8_0"}, "symmetric")[2] == "Q4_0"
    with pytest.raises(
        ValueError, match=r"as Q4_0 or Q4_K, or a wider .*; got 'Q4_1' \(the choices of a symmetric"
    ):
        type_map({4: "Q4_1"}, "symmetric")
    assert row_type("Q4_K", 576, "symmetric")[0] == "Q4_0" and row_type("Q5_K", 576, "symmetric")[0] == "Q5_0"
    # an asymmetric fit's codes have a real zero: never Q4_0; a symmetric one never Q4_1
    assert not holds_codes("Q4_0", 4, 32) and not holds_codes("Q4_1", 4, 32, symmetric=True)
    assert not holds_codes("Q4_0", 5, 32, symmetric=True) and not holds_codes("Q4_0", 4, 16, symmetric=True)
    with pytest.raises(ValueError, match="Q4_0 cannot hold 4-bit codes at group size 32 .* asymmetric fit"):
        codes_to_blocks(quantize(_weight(), 4, 32, "rtn"), "Q4_0")
    qt = quantize(_weight(rows=32), 4, 32, "symmetric")
    permuted = llama_rows_codes(qt, 4)
    assert permuted.symmetric and torch.equal(dequantize(permuted), llama_rows(dequantize(qt), 4))


@pytest.mark.parametrize(("bits", "type_name"), [(4, "Q4_0"), (5, "Q5_0"), (8, "Q8_0")])
def test_symmetric_fit_is_ggml_s_own_quantiser_byte_for_byte(bits, type_name, ggml_quantize):
    """Against llama.cpp's C quantiser itself (``ggml_quantize_chunk``), not gguf's port of it."""
    w = _heavy_tailed(seed=3)
    ours = codes_to_blocks(quantize(w, bits, 32, "symmetric"), type_name)
    np.testing.assert_array_equal(ours, ggml_quantize(w.numpy(), type_name))
