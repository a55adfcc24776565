"""The packed base file: a round trip gives quantize_model_'s model bit for bit, without a fit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qradaptor.build import apply_plan, quantize_model_
from qradaptor.models.structure import inspect_model
from qradaptor.packed import load_packed_base_, read_packed_header, save_packed_base
from qradaptor.plan import LayerSpec, Plan
from qradaptor.quant.modules import QuantEmbedding, QuantLinear
from qradaptor.runs import dequantize_model_

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    pass


def _mixed_plan(tied: bool) -> Plan:
    """Mixed bits per block, one block left 16-bit, embedding (and head) quantised."""
    return Plan.from_lists([4, 2, 16], [8, 0, 4], embed_bits=8, head_bits=8 if tied else 3, group_size=32)


def _module_plan() -> Plan:
    layers = {
        "0.self_attn.q_proj": LayerSpec(3, 4),
        "0.mlp.down_proj": LayerSpec(8, 0),
        "1.self_attn.v_proj": LayerSpec(2, 2),
        "2.mlp.up_proj": LayerSpec(16, 8),
    }
    return Plan(layers, 3, group_size=64)


def _pack(model, plan, path, *, wrap: bool = True):
    """Quantises a copy of ``model`` (with adapters when ``wrap``), saves its packed base."""
    copy_ = copy.deepcopy(model)
    structure = inspect_model(copy_)
    built = apply_plan(copy_, plan) if wrap else copy_
    if not wrap:
        quantize_model_(copy_, plan)
    save_packed_base(built, structure, plan, path, model_fingerprint="weights-123")
    return path


def _assert_same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    for (name, ma), (_, mb) in zip(a.named_modules(), b.named_modules(), strict=True):
        assert type(ma) is type(mb), name
    with torch.no_grad():
        assert torch.equal(a(IDS).logits, b(IDS).logits)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_round_trip_equals_quantize_model_bit_for_bit(llama_factory, tmp_path, tied) -> None:
    plan = _mixed_plan(tied)
    path = _pack(llama_factory(tied=tied), plan, tmp_path / "base.safetensors")
    loaded = llama_factory(tied=tied)
    structure = load_packed_base_(loaded, plan, path)
    fitted = llama_factory(tied=tied)
    assert quantize_model_(fitted, plan) == structure
    _assert_same_model(loaded, fitted)
    assert loaded.config.tie_word_embeddings is False
    assert isinstance(loaded.model.embed_tokens, QuantEmbedding) and isinstance(loaded.lm_head, QuantLinear)
    assert loaded.lm_head.bits == (8 if tied else 3)
    assert isinstance(loaded.model.layers[2].self_attn.q_proj, torch.nn.Linear)  # 16-bit block untouched
    assert not any(p.requires_grad for p in loaded.parameters())
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    # Keyed by the unwrapped path though saved from the PEFT model; a tied head stored once.
    assert "model.layers.0.self_attn.q_proj.qweight" in keys and "model.embed_tokens.scale" in keys
    assert not any("base_model" in k or "base_layer" in k for k in keys)
    assert ("lm_head.qweight" in keys) is not tied
    if tied:
        assert loaded.lm_head.qweight is loaded.model.embed_tokens.qweight
    header = read_packed_header(path)
    assert header.plan_hash == plan.plan_hash and header.plan == plan
    assert header.shared == ({"lm_head": "model.embed_tokens"} if tied else {})
    assert header.bits["model.layers.1.mlp.up_proj"] == 2 and header.bits["lm_head"] == (8 if tied else 3)
    assert "model.layers.2.mlp.up_proj" not in header.bits
    assert header.model_fingerprint == "weights-123" and header.model_signature == structure.signature


def test_module_plan_round_trip(llama_factory, tmp_path) -> None:
    plan = _module_plan()
    path = _pack(llama_factory(tied=False), plan, tmp_path / "base.safetensors", wrap=False)
    loaded, fitted = llama_factory(tied=False), llama_factory(tied=False)
    load_packed_base_(loaded, plan, path)
    quantize_model_(fitted, plan)
    _assert_same_model(loaded, fitted)
    assert set(read_packed_header(path).bits) == {
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.v_proj",
    }


def test_gpt2_biases_and_conv1d(tiny_gpt2, tmp_path) -> None:
    plan = Plan.from_lists([4, 3], [4, 0], embed_bits=8, head_bits=8, group_size=32)
    path = _pack(tiny_gpt2, plan, tmp_path / "base.safetensors")
    loaded, fitted = copy.deepcopy(tiny_gpt2), copy.deepcopy(tiny_gpt2)
    load_packed_base_(loaded, plan, path)
    quantize_model_(fitted, plan)
    _assert_same_model(loaded, fitted)
    assert loaded.transformer.h[0].attn.c_attn.bias is not None


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_dequantize_model_gives_the_quantised_outputs_densely(llama_factory, tied) -> None:
    model = llama_factory(tied=tied)
    structure = quantize_model_(model, _mixed_plan(tied))
    with torch.no_grad():
        expected = model(IDS).logits
    dequantize_model_(model, structure)
    assert not any(isinstance(m, QuantLinear | QuantEmbedding) for m in model.modules())
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    assert model.config.tie_word_embeddings is tied
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, expected, atol=1e-5, rtol=1e-5)


# ----- errors ------------------------------------------------------------------------------
@pytest.fixture
def packed(llama_factory, tmp_path):
    """(plan, path) of the untied tiny Llama's packed base."""
    plan = _mixed_plan(False)
    return plan, _pack(llama_factory(tied=False), plan, tmp_path / "base.safetensors", wrap=False)


def _tamper(path, out, *, drop=None, replace=None, meta=None):
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata())
    tensors.pop(drop, None)
    tensors.update(replace or {})
    metadata.update(meta or {})
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_base_for_another_plan(packed, llama_factory) -> None:
    plan, path = packed
    other = Plan.from_lists([4, 2, 16], [8, 0, 4], embed_bits=8, head_bits=4, group_size=32)
    with pytest.raises(
        ValueError, match=rf"base.safetensors' was quantised with plan \({plan.plan_hash}\), not"
    ):
        load_packed_base_(llama_factory(tied=False), other, path)


def test_base_for_another_model(packed, llama_factory) -> None:
    plan, path = packed
    with pytest.raises(ValueError, match="was packed from another model"):
        load_packed_base_(llama_factory(tied=False, intermediate_size=192), plan, path)


def test_missing_or_foreign_files(packed, llama_factory, tmp_path) -> None:
    plan, _ = packed
    with pytest.raises(ValueError, match="nope.safetensors' does not exist"):
        load_packed_base_(llama_factory(tied=False), plan, tmp_path / "nope.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="is not a packed base"):
        load_packed_base_(llama_factory(tied=False), plan, tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        read_packed_header(tmp_path / "junk.safetensors")


def test_tampered_files_name_the_module(packed, llama_factory, tmp_path) -> None:
    plan, path = packed
    name = "model.layers.1.mlp.up_proj"
    cases = [
        (dict(drop=f"{name}.scale"), rf"has no {name}\.scale"),
        (dict(replace={f"{name}.qweight": torch.zeros(128, 8, dtype=torch.uint8)}), rf"{name}\.qweight is"),
        (dict(meta={"bits": json.dumps({**read_packed_header(path).bits, name: 3})}), rf"{name} has bits 3"),
        (dict(meta={"format_version": "99"}), "has format version '99'"),
    ]
    for i, (change, message) in enumerate(cases):
        bad = _tamper(path, tmp_path / f"bad{i}.safetensors", **change)
        with pytest.raises(ValueError, match=message):
            load_packed_base_(llama_factory(tied=False), plan, bad)


def test_save_refuses_a_model_quantised_otherwise(llama_factory, tmp_path) -> None:
    model = llama_factory(tied=False)
    structure = quantize_model_(model, Plan.uniform(3, 4, 0, group_size=32))
    with pytest.raises(
        ValueError, match=r"does not match plan .*model.layers.0.self_attn.q_proj has 4 bits, not 2"
    ):
        save_packed_base(model, structure, Plan.uniform(3, 2, 0, group_size=32), tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="packed modules the plan does not quantise"):
        save_packed_base(model, structure, Plan.uniform(3, 16, 0), tmp_path / "b.safetensors")
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_symmetric_round_trip_stores_no_zeros(llama_factory, tmp_path, tied) -> None:
    plan = Plan.from_lists(
        [4, 8, 16], [8, 0, 4], embed_bits=5, head_bits=5, group_size=32, quant_method="symmetric"
    )
    path = _pack(llama_factory(tied=tied), plan, tmp_path / "base.safetensors")
    loaded, fitted = llama_factory(tied=tied), llama_factory(tied=tied)
    load_packed_base_(loaded, plan, path)
    quantize_model_(fitted, plan)
    _assert_same_model(loaded, fitted)
    assert loaded.model.layers[0].self_attn.q_proj.zero is None and loaded.model.embed_tokens.zero is None
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert "model.layers.0.self_attn.q_proj.scale" in keys and not any(k.endswith(".zero") for k in keys)
