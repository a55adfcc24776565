from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from torch import nn

from qradaptor.build import apply_plan
from qradaptor.lora import LoraQuantLinear
from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan
from qradaptor.quant.modules import QuantEmbedding, QuantLinear

IDS = torch.tensor([[1, 5, 9, 200, 3, 77, 12, 0]])


def test_bits_and_ranks_in_the_built_model_equal_the_plan(tiny_llama) -> None:
    plan = Plan.from_lists([4, 16, 2], [8, 0, 16])
    model = apply_plan(tiny_llama, plan)
    s = inspect_model(model.base_model.model)
    for block, name, spec in plan.iter_modules(s):
        module = model.base_model.model.get_submodule(s.module_path(block, name))
        if spec.rank:
            assert isinstance(module, LoraQuantLinear) == (spec.bits != 16)
            assert module.r["default"] == spec.rank
            assert module.scaling["default"] == pytest.approx(plan.alpha / spec.rank)
            base = module.get_base_layer()
        else:
            base = module
        if spec.bits == 16:
            assert type(base) is nn.Linear
        else:
            assert isinstance(base, QuantLinear) and base.bits == spec.bits


def test_lora_with_b_zero_equals_the_quantized_base(llama_factory) -> None:
    plan = Plan.uniform(3, 3, 8)
    base = apply_plan(llama_factory(), Plan.uniform(3, 3, 0))
    adapted = apply_plan(llama_factory(), plan)
    assert torch.equal(base(IDS).logits, adapted(IDS).logits)


def test_only_adapters_train(tiny_llama) -> None:
    model = apply_plan(tiny_llama, Plan.uniform(3, 4, 4))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_simulated_and_packed_paths_agree(llama_factory) -> None:
    plan = Plan.from_lists([2, 3, 8], [4, 4, 4])
    packed = apply_plan(llama_factory(), plan)
    dense = apply_plan(llama_factory(), plan, simulated=True)
    dense.load_state_dict(packed.state_dict(), strict=False)  # same adapter init
    torch.testing.assert_close(packed(IDS).logits, dense(IDS).logits, rtol=0, atol=1e-5)


def test_quantization_error_grows_as_bits_fall(llama_factory) -> None:
    ref = llama_factory()(IDS).logits
    errs = [
        (apply_plan(llama_factory(), Plan.uniform(3, b, 0))(IDS).logits - ref).abs().mean().item()
        for b in (8, 4, 2)
    ]
    assert errs[0] < errs[1] < errs[2]


def test_embedding_and_tied_head_quantized(tiny_llama) -> None:
    model = apply_plan(tiny_llama, Plan.uniform(3, 16, 0, embed_bits=8, head_bits=8))
    assert isinstance(model.model.embed_tokens, QuantEmbedding)
    assert isinstance(model.lm_head, QuantLinear)
    assert model.lm_head.qweight.data_ptr() == model.model.embed_tokens.qweight.data_ptr()
    assert torch.isfinite(model(IDS).logits).all()


def test_gpt2_conv1d(tiny_gpt2) -> None:
    ref = tiny_gpt2(IDS % 128).logits
    model = apply_plan(tiny_gpt2, Plan.from_lists([8, 16], [4, 4]))
    out = model(IDS % 128).logits
    assert (out - ref).abs().max() < 0.05  # 8-bit: close to the original


def test_saved_adapter_is_plain_peft(tmp_path, llama_factory) -> None:
    plan = Plan.from_lists([4, 16, 2], [8, 0, 16])
    model = apply_plan(llama_factory(), plan)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["rank_pattern"]["model.layers.2.mlp.down_proj"] == 16
    assert not any(".layers.1." in k for k in config["rank_pattern"])
    # Loaded onto a fresh base quantised the same way, with PEFT's own loader.
    base = llama_factory()
    from qradaptor.build import quantize_model_

    quantize_model_(base, plan)
    from qradaptor.lora import lora_config

    reloaded = PeftModel.from_pretrained(base, tmp_path, config=lora_config(plan, inspect_model(base)))
    torch.testing.assert_close(reloaded(IDS).logits, expected)


def test_merge_into_packed_codes_is_refused(tiny_llama) -> None:
    model = apply_plan(tiny_llama, Plan.uniform(3, 4, 4))
    with pytest.raises(NotImplementedError, match="would quantise the adapter away"):
        model.merge_and_unload()


def test_module_granularity(tiny_llama) -> None:
    plan = Plan({"0.mlp.down_proj": LayerSpec(2, 4), "2.self_attn.q_proj": LayerSpec(16, 8)}, 3)
    model = apply_plan(tiny_llama, plan)
    inner = model.base_model.model
    assert inner.model.layers[0].mlp.down_proj.get_base_layer().bits == 2
    assert isinstance(inner.model.layers[0].mlp.up_proj, nn.Linear)
    assert inner.model.layers[2].self_attn.q_proj.r["default"] == 8


def test_a_checkpointed_model_dequantises_each_packed_layer_twice_a_step(llama_factory, monkeypatch) -> None:
    """enable_gradient_checkpointing marks every packed layer of the decoder layers: a step's
    forward, the checkpoint's recomputation and the backward dequantise each twice, not three
    times, and the gradients are those of the model without checkpointing."""
    from qradaptor.build import enable_gradient_checkpointing

    plan = Plan.uniform(3, 4, 4)
    grads = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = apply_plan(llama_factory(), plan)
        model.train()
        layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
        if checkpointed:
            assert enable_gradient_checkpointing(model) == len(layers) == 3 * 7
        calls: list[int] = []
        for layer in layers:
            monkeypatch.setattr(
                layer,
                "dequantized_weight",
                lambda dtype=None, _f=layer.dequantized_weight, _calls=calls: _calls.append(1) or _f(dtype),
            )
        model(IDS, labels=IDS).loss.backward()
        if checkpointed:  # forward, recomputation (whose weight the backward takes), no third
            assert len(calls) == 2 * len(layers)
        grads[checkpointed] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[False].keys() == grads[True].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-6)


def test_checkpointing_the_first_blocks_only_recomputes_those(llama_factory, monkeypatch) -> None:
    """enable_gradient_checkpointing(model, blocks=2) checkpoints decoder layers 0 and 1 and marks
    only their packed layers; the third layer keeps its activations and no weight. A step's
    gradients are those of the model without checkpointing."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from qradaptor.build import enable_gradient_checkpointing

    torch.manual_seed(0)
    model = apply_plan(llama_factory(), Plan.uniform(3, 4, 4))
    model.train()
    decoder = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert enable_gradient_checkpointing(model, blocks=2) == 2 * 7
    assert [layer.gradient_checkpointing for layer in decoder] == [True, True, False]
    marked = [[q.checkpointed for q in layer.modules() if isinstance(q, QuantLinear)] for layer in decoder]
    assert marked == [[True] * 7, [True] * 7, [False] * 7]
    model(IDS, labels=IDS).loss.backward()
    partial = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    plain = apply_plan(llama_factory(), Plan.uniform(3, 4, 4))
    plain.train()
    plain(IDS, labels=IDS).loss.backward()
    for name, p in plain.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(partial[name], p.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"blocks must be 1..3 \(the model's decoder layers\), got 4"):
        enable_gradient_checkpointing(apply_plan(llama_factory(), Plan.uniform(3, 4, 4)), blocks=4)
