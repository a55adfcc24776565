from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qradaptor.quant.modules import (
    QuantEmbedding,
    QuantLinear,
    dense_bytes,
    dequantised_once,
    keep_weights_for_recompute,
    simulated_linear,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_forward_and_backward_equal_dense_with_dequantized_weight(bits: int) -> None:
    torch.manual_seed(0)
    w, b = torch.randn(96, 128), torch.randn(96)
    layer = QuantLinear.from_weight(w, b, bits, 64, "hqq")
    w_hat = layer.dequantized_weight()
    x = torch.randn(3, 5, 128, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), F.linear(x_ref, w_hat, b)
    assert torch.allclose(y, y_ref, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert not any(p.requires_grad for p in layer.parameters())


def _count_dequantisations(layers, monkeypatch) -> list[int]:
    calls: list[int] = []
    for layer in layers:
        original = layer.dequantized_weight

        def counted(dtype=None, _original=original):
            calls.append(1)
            return _original(dtype)

        monkeypatch.setattr(layer, "dequantized_weight", counted)
    return calls


@pytest.mark.parametrize(
    ("checkpointed", "marked", "dequantisations"), [(False, False, 4), (True, False, 6), (True, True, 4)]
)
def test_a_checkpointed_block_dequantises_twice_not_three_times(
    checkpointed: bool, marked: bool, dequantisations: int, monkeypatch
) -> None:
    """Forward and backward dequantise once each. Under gradient checkpointing the block's
    forward runs again inside the backward (a third time); marked layers save the weight, which
    the checkpoint drops and that rerun gives back to the backward: twice, same gradients."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    first = QuantLinear.from_weight(torch.randn(64, 32), None, 4, 32, "hqq")
    second = QuantLinear.from_weight(torch.randn(32, 64), torch.randn(32), 3, 32, "hqq")
    adapter = nn.Linear(32, 32)  # something trainable, as a LoRA adapter, that saves its input

    def block(x: torch.Tensor) -> torch.Tensor:
        return adapter(second(torch.relu(first(x))))

    if marked:
        assert keep_weights_for_recompute(nn.ModuleList([first, second])) == 2
    x = torch.randn(4, 32, requires_grad=True)
    reference = block(x)
    grad = torch.randn_like(reference)
    (x_grad,) = torch.autograd.grad(reference, x, grad)
    calls = _count_dequantisations([first, second], monkeypatch)
    x2 = x.detach().clone().requires_grad_(True)
    y = checkpoint(block, x2, use_reentrant=False) if checkpointed else block(x2)
    y.backward(grad)
    assert len(calls) == dequantisations  # of two layers
    assert torch.allclose(y, reference) and torch.allclose(x2.grad, x_grad, atol=1e-6)


def test_dequantised_once_gives_the_same_outputs_and_holds_nothing_after() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        QuantLinear.from_weight(torch.randn(48, 64), torch.randn(48), 4, 32, "hqq"),
        nn.ReLU(),
        QuantLinear.from_weight(torch.randn(16, 48), None, 3, 16, "hqq"),
    )
    x = torch.randn(5, 64)
    with torch.no_grad():
        packed = model(x)
    with dequantised_once(model) as held, torch.no_grad():
        assert held == dense_bytes(model) == (48 * 64 + 16 * 48) * 4
        assert all(m.dense is not None for m in model if isinstance(m, QuantLinear))
        assert torch.equal(model(x), packed)  # the very same values, not merely close
        calls = []
        monkey = model[0].dequantized_weight
        model[0].dequantized_weight = lambda dtype=None: calls.append(1) or monkey(dtype)
        model(x)
        assert calls == []  # no dequantisation per forward
        del model[0].dequantized_weight
    assert all(m.dense is None for m in model if isinstance(m, QuantLinear))
    with dequantised_once(model):  # with gradients the packed path runs, and they flow
        y = model(x.requires_grad_(True))
        y.sum().backward()
    assert x.grad is not None and torch.equal(y.detach(), packed)


def test_holds_no_dense_copy() -> None:
    layer = QuantLinear.from_weight(torch.randn(64, 128), None, 4)
    stored = {name: t.dtype for name, t in layer.state_dict().items()}
    assert stored == {"qweight": torch.uint8, "scale": torch.float16, "zero": torch.float16}
    assert layer.qweight.numel() == 64 * 128 * 4 // 8


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_simulated_path_gives_the_same_outputs(bits: int) -> None:
    torch.manual_seed(1)
    w, b = torch.randn(32, 64), torch.randn(32)
    packed = QuantLinear.from_weight(w, b, bits)
    dense = simulated_linear(w, b, bits)
    x = torch.randn(4, 64)
    assert isinstance(dense, nn.Linear) and not dense.weight.requires_grad
    assert torch.equal(packed(x), dense(x))


def test_embedding_lookup_matches_dequantized_table_and_tied_head() -> None:
    torch.manual_seed(2)
    emb = nn.Embedding(100, 64)
    qemb = QuantEmbedding.from_embedding(emb, 8)
    head = qemb.as_linear()
    table = head.dequantized_weight()
    ids = torch.tensor([[0, 5, 99], [7, 7, 3]])
    assert torch.equal(qemb(ids), table[ids])
    assert (table - emb.weight).abs().max() < 0.05
    assert head.qweight.data_ptr() == qemb.qweight.data_ptr()  # shared, not copied


def test_bf16_compute() -> None:
    layer = QuantLinear.from_weight(torch.randn(16, 64), None, 4, compute_dtype=torch.bfloat16)
    assert layer(torch.randn(2, 64)).dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("bits", "method"), [(b, "hqq") for b in (1, 2, 3, 4, 5, 8)] + [(b, "symmetric") for b in (2, 4, 5, 8)]
)
def test_fused_cuda_kernels_equal_the_eager_dequantisation(bits: int, method: str) -> None:
    from qradaptor.quant.modules import _compiled_dequantize, _triton_dequantize
    from qradaptor.quant.quantizer import dequantize_parts, quantize

    qt = quantize(torch.randn(96, 192, device="cuda"), bits, 64, method)  # symmetric: zero None
    call = (qt.packed, qt.scale, qt.zero, bits, 192, 64, torch.bfloat16)
    expected = dequantize_parts(*call)
    assert torch.equal(_compiled_dequantize()(*call), expected)
    kernel = _triton_dequantize()
    if kernel is not None:
        assert torch.equal(kernel(*call), expected)
