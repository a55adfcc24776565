"""Tiny Llama GGUFs written in-process (``tests/conftest.write_tiny_gguf`` in ``EXPORT_STYLE``), a
private qradaptor cache, training runs on them, and ggml's own quantiser through
llama-cpp-python (skipped without it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

BLOCKS, HIDDEN, FFN, HEADS, KV_HEADS = 4, 64, 128, 4, 2
WIDE = dict(blocks=5, hidden=256, ffn=512)
"""A tiny model whose rows (256 and 512 inputs) take K-quants."""
EXPORT_STYLE = dict(
    blocks=BLOCKS,
    hidden=HIDDEN,
    ffn=FFN,
    heads=HEADS,
    kv_heads=KV_HEADS,
    embed="Q8_0",
    random_norms=True,
    chat_template=True,
    token_scores=False,
)
"""How these tests' tiny GGUFs differ from ``tests/conftest.write_tiny_gguf``'s defaults: the
tied embedding Q8_0 (as the embedded SmolLM2's), norms not all ones, a chat template to copy."""


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, gguf_writer):
    """The tiny GGUF, with ``$QRADAPTOR_CACHE`` pointing at a fresh folder for the module."""
    root = tmp_path_factory.mktemp("gguf-src")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QRADAPTOR_CACHE", str(root / "cache"))
        yield gguf_writer(root / "tiny.gguf", **EXPORT_STYLE)


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory: pytest.TempPathFactory, gguf_writer):
    """The ``WIDE`` tiny GGUF, with its own ``$QRADAPTOR_CACHE``."""
    root = tmp_path_factory.mktemp("gguf-wide")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QRADAPTOR_CACHE", str(root / "cache"))
        yield gguf_writer(root / "wide.gguf", **(EXPORT_STYLE | WIDE))


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
