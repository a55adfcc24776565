"""Tiny GGUF files written in-process, and a private qradaptor cache per test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    linear_dtype: type = np.float32,
    head: str | None = None,
) -> Path:
    """A 2-block Llama GGUF (hidden 32, byte-level BPE over 30 tokens).

    Args:
        path: Where to write it.
        arch: ``general.architecture``.
        linear_dtype: numpy dtype of the block linears (``np.float16`` stores them as F16); the
            norms and the embedding stay F32.
        head: None stores no ``output.weight`` (tied); ``"copy"`` stores the embedding again as
            Q8_0 (a tied model written untied); ``"other"`` stores an unrelated F32 head.
    """
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    vocab = [chr(c) for c in range(97, 123)] + ["ab", "<s>", "</s>", " "]
    n_vocab, hidden, ffn, blocks, heads, kv_heads = len(vocab), 32, 64, 2, 4, 2
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(blocks)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([1] * n_vocab)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_merges(["a b"])
    w.add_bos_token_id(n_vocab - 3)
    w.add_eos_token_id(n_vocab - 2)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    embed = rand(n_vocab, hidden)
    w.add_tensor("token_embd.weight", embed)
    if head == "copy":
        codes = quantize(embed, GGMLQuantizationType.Q8_0)
        w.add_tensor("output.weight", codes, raw_dtype=GGMLQuantizationType.Q8_0)
    elif head == "other":
        w.add_tensor("output.weight", rand(n_vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    kv = hidden * kv_heads // heads
    shapes = dict(
        attn_q=(hidden, hidden),
        attn_k=(kv, hidden),
        attn_v=(kv, hidden),
        attn_output=(hidden, hidden),
        ffn_gate=(ffn, hidden),
        ffn_up=(ffn, hidden),
        ffn_down=(hidden, ffn),
    )
    for i in range(blocks):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape).astype(linear_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(name="write_gguf")
def write_gguf_fixture() -> Callable[..., Path]:
    """:func:`write_gguf`, for tests that write their own."""
    return write_gguf


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    """A tied, all-F32 tiny GGUF, alone in its folder."""
    (tmp_path / "g").mkdir()
    return write_gguf(tmp_path / "g" / "tiny.gguf")


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$QRADAPTOR_CACHE`` for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("QRADAPTOR_CACHE", str(root))
    return root
