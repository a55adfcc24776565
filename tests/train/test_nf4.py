"""bitsandbytes NF4 with and without double quantisation: the bytes, the method wiring, the layers."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qradaptor.memory import nf4_nbytes, plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.train.methods import get_method
from qradaptor.train.run import base_format


def test_nf4_bytes_by_hand() -> None:
    # 576 x 576 = 331,776 weights: 165,888 code bytes, 5,184 blocks of 64, the 16-level map (64 B).
    assert nf4_nbytes(576, 576, double_quant=False) == 165_888 + 64 + 4 * 5_184
    # Double quantised: 8-bit absmaxes, an fp32 offset, ceil(5184 / 256) = 21 fp32 second-level
    # absmaxes and the 256-entry fp32 dynamic map.
    assert nf4_nbytes(576, 576, double_quant=True) == 165_888 + 64 + 5_184 + 4 + 4 * 21 + 1_024
    # A large layer shows the per-weight rates: 4.5 bits, and 4 + 8/64 + 32/(64 * 256) = 4.127.
    n = 4096 * 4096
    assert 8 * nf4_nbytes(4096, 4096, double_quant=False) / n == pytest.approx(4.5, abs=1e-4)
    assert 8 * nf4_nbytes(4096, 4096, double_quant=True) / n == pytest.approx(4.1274, abs=1e-4)


def test_plan_memory_counts_nf4_layers(tiny_llama) -> None:
    structure = inspect_model(tiny_llama)
    plan = Plan.from_lists([4, 16, 4], [8, 8, 8])
    packed = plan_memory(structure, plan)
    for fmt, dq in (("nf4", False), ("nf4-dq", True)):
        report = plan_memory(structure, plan, base_format=fmt)
        for mine, theirs in zip(report.layers, packed.layers, strict=True):
            info = next(i for i in structure.linears if mine.path.endswith(i.name))
            expected = (
                theirs.weight_bytes
                if mine.bits == 16
                else nf4_nbytes(info.out_features, info.in_features, double_quant=dq)
            )
            assert mine.weight_bytes == expected
            assert mine.adapter_bytes == theirs.adapter_bytes
        assert report.embed_bytes == packed.embed_bytes
    # On 64-wide layers the double-quantised layer's fixed 1 KiB map outweighs its saving.
    nodq, dq = (plan_memory(structure, plan, base_format=f).total_bytes for f in ("nf4", "nf4-dq"))
    assert dq > nodq
    with pytest.raises(ValueError, match="base_format 'nf4' stores 4-bit block linears only.*\\[3, 4\\]"):
        plan_memory(structure, Plan.from_lists([4, 3, 4], [8, 8, 8]), base_format="nf4")
    with pytest.raises(ValueError, match="embed_bits 8"):
        plan_memory(structure, Plan.uniform(3, 4, 8, embed_bits=8, head_bits=8), base_format="nf4-dq")
    with pytest.raises(ValueError, match="base_format must be one of .*got 'nf8'"):
        plan_memory(structure, plan, base_format="nf8")


def test_the_two_nf4_methods() -> None:
    qlora, nodq = get_method("qlora-nf4"), get_method("qlora-nf4-nodq")
    assert qlora.backend == nodq.backend == "bitsandbytes"
    assert (qlora.double_quant, nodq.double_quant) == (True, False)
    assert (base_format(qlora), base_format(nodq), base_format(get_method("qlora-4"))) == (
        "nf4-dq",
        "nf4",
        "packed",
    )


class _FakeParams4bit:
    def __init__(self, data: torch.Tensor, **kwargs: object) -> None:
        self.data, self.kwargs = data, kwargs


class _FakeLinear4bit(nn.Module):
    def __init__(self, in_features: int, out_features: int, **kwargs: object) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kwargs = in_features, out_features, kwargs
        self.bias = None


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_layers_get_double_quant_explicitly(monkeypatch, tiny_llama, double_quant: bool) -> None:
    # bitsandbytes' Params4bit defaults to compress_statistics=True: both layers must be told.
    fake = SimpleNamespace(nn=SimpleNamespace(Linear4bit=_FakeLinear4bit, Params4bit=_FakeParams4bit))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    from qradaptor.train.nf4 import nf4_quantize_

    structure = nf4_quantize_(tiny_llama, Plan.from_lists([4, 16, 4], [8, 8, 8]), double_quant=double_quant)
    layers = [m for m in tiny_llama.modules() if isinstance(m, _FakeLinear4bit)]
    assert len(layers) == 2 * len(structure.linears)  # blocks 0 and 2; block 1 stays 16-bit
    for layer in layers:
        assert layer.kwargs["compress_statistics"] is double_quant
        assert layer.kwargs["quant_type"] == "nf4"
        assert layer.weight.kwargs["compress_statistics"] is double_quant
        assert layer.weight.kwargs["blocksize"] == 64 and layer.weight.kwargs["quant_type"] == "nf4"


@pytest.mark.gpu
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_equal_what_bitsandbytes_holds(tiny_llama, double_quant: bool) -> None:
    pytest.importorskip("bitsandbytes")
    from qradaptor.train.nf4 import nf4_quantize_

    model = tiny_llama.to("cuda", torch.bfloat16)
    plan = Plan.uniform(3, 4, 0)
    structure = nf4_quantize_(model, plan, double_quant=double_quant)
    held = 0
    for block, name, _ in plan.iter_modules(structure):
        weight = model.get_submodule(structure.module_path(block, name)).weight
        state = weight.quant_state
        assert state.nested is double_quant
        tensors = [weight.data, state.absmax, state.code]
        if double_quant:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
        held += sum(t.numel() * t.element_size() for t in tensors)
    report = plan_memory(structure, plan, base_format="nf4-dq" if double_quant else "nf4")
    assert held == sum(m.weight_bytes for m in report.layers)
