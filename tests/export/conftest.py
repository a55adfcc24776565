"""Tiny Llama GGUFs written in-process, a private qradaptor cache, training runs on them, and
ggml's own quantiser through llama-cpp-python (skipped without it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

BLOCKS, HIDDEN, FFN, HEADS, KV_HEADS = 4, 64, 128, 4, 2
WIDE = dict(blocks=5, hidden=256, ffn=512)
"""A tiny model whose rows (256 and 512 inputs) take K-quants."""


def write_tiny_gguf(path: Path, *, blocks: int = BLOCKS, hidden: int = HIDDEN, ffn: int = FFN) -> Path:
    """A Llama GGUF of ``blocks`` blocks (hidden 64, 4 heads, 2 key-value heads by default),
    byte-level BPE over 30 tokens, a chat template; block linears F32, norms F32, the tied
    embedding Q8_0."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    vocab = [chr(c) for c in range(97, 123)] + ["ab", "<s>", "</s>", " "]
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(blocks)
    w.add_feed_forward_length(ffn)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([1] * len(vocab))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(len(vocab) - 3)
    w.add_eos_token_id(len(vocab) - 2)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    embed = quantize(rand(len(vocab), hidden), GGMLQuantizationType.Q8_0)
    w.add_tensor("token_embd.weight", embed, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", (1 + rand(hidden)).astype(np.float32))
    kv = hidden * KV_HEADS // HEADS
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
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + rand(hidden)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + rand(hidden)).astype(np.float32))
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory):
    """The tiny GGUF, with ``$QRADAPTOR_CACHE`` pointing at a fresh folder for the module."""
    root = tmp_path_factory.mktemp("gguf-src")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QRADAPTOR_CACHE", str(root / "cache"))
        yield write_tiny_gguf(root / "tiny.gguf")


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory: pytest.TempPathFactory):
    """The ``WIDE`` tiny GGUF, with its own ``$QRADAPTOR_CACHE``."""
    root = tmp_path_factory.mktemp("gguf-wide")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QRADAPTOR_CACHE", str(root / "cache"))
        yield write_tiny_gguf(root / "wide.gguf", **WIDE)


@pytest.fixture(scope="session")
def ggml_quantize():
    """``quantize(x, type_name) -> bytes`` by ggml's own quantiser (``ggml_quantize_chunk``, what
    ``llama_model_quantize`` runs per tensor), through llama-cpp-python; skips without it."""
    pytest.importorskip("llama_cpp")
    from qradaptor.export.llama_quantize import ggml_quantize_rows

    return ggml_quantize_rows


def make_run(run: Path, source: Path, plan, *, adapter_seed: int | None = 0) -> Path:
    """A run folder as ``qra train`` leaves one: plan, adapter (random B unless seed is None),
    packed base, train.json naming ``source``."""
    from qradaptor.build import apply_plan
    from qradaptor.models.loading import load_model
    from qradaptor.models.structure import inspect_model
    from qradaptor.packed import save_packed_base

    model = load_model(str(source)).model
    structure = inspect_model(model)
    peft = apply_plan(model, plan)
    run.mkdir(parents=True)
    if any(spec.rank for spec in plan.layers.values()):
        gen = torch.Generator().manual_seed(adapter_seed or 0)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name and adapter_seed is not None:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        peft.save_pretrained(run / "adapter")
    save_packed_base(peft, structure, plan, run / "base.safetensors")
    (run / "plan.json").write_text(plan.to_json())
    (run / "train.json").write_text(json.dumps({"model": os.fspath(source), "method": "qlora"}))
    return run
