"""llama.cpp's own quantiser through ``export.llama_quantize``: a whole file by
``llama_model_quantize`` holds our K-quant bytes (skipped without llama-cpp-python)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from qradaptor.export.kquants import K_TYPES, quantize_rows


@pytest.fixture(autouse=True)
def _needs_llama_cpp() -> None:
    pytest.importorskip("llama_cpp")


def _f32(tensor) -> np.ndarray:
    rows, cols = (int(n) for n in reversed(tensor.shape.tolist()))
    return np.asarray(tensor.data, np.float32).reshape(rows, cols)


@pytest.mark.parametrize("type_name", K_TYPES)
def test_llama_model_quantize_writes_our_bytes(type_name, wide_gguf, tmp_path) -> None:
    from qradaptor.export.llama_quantize import quantize_gguf

    out = tmp_path / f"{type_name}.gguf"
    quantize_gguf(wide_gguf, out, default="Q8_0", overrides={"ffn_down": type_name}, embedding="Q8_0")
    source = {t.name: t for t in GGUFReader(wide_gguf).tensors}
    types = {}
    for tensor in GGUFReader(out).tensors:
        types[tensor.name] = tensor.tensor_type.name
        if "ffn_down" in tensor.name:
            ours = quantize_rows(_f32(source[tensor.name]), type_name)
            np.testing.assert_array_equal(np.asarray(tensor.data).reshape(ours.shape), ours)
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(5)} == {type_name}
    assert types["blk.0.attn_q.weight"] == types["blk.4.ffn_up.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"


def test_a_default_without_a_file_type_is_refused(wide_gguf, tmp_path) -> None:
    from qradaptor.export.llama_quantize import quantize_gguf

    with pytest.raises(ValueError, match="default must be a type llama.cpp has a file type for.*'Q3_X'"):
        quantize_gguf(wide_gguf, tmp_path / "x.gguf", default="Q3_X")
    assert not (tmp_path / "x.gguf").exists()


def test_rows_that_are_not_whole_blocks_are_refused() -> None:
    from qradaptor.export.llama_quantize import ggml_quantize_rows

    with pytest.raises(
        ValueError, match=r"Q4_K needs rows of a multiple of 256 inputs, got shape \(2, 576\)"
    ):
        ggml_quantize_rows(np.zeros((2, 576), np.float32), "Q4_K")
