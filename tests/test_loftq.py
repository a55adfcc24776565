from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel

from qradaptor.build import apply_plan
from qradaptor.loftq import apply_loftq_, loftq_decompose, low_rank_split
from qradaptor.lora import AdapterVariant, lora_config
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.quantizer import dequantize, quantize

IDS = torch.tensor([[1, 5, 9, 200, 3, 77, 12, 0], [4, 4, 8, 15, 16, 23, 42, 99]])
LOFTQ = AdapterVariant(init="loftq", loftq_iters=3)


@pytest.fixture(autouse=True)
def _quiet(one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers/peft deprecation chatter
        yield


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    """(64, 128): noise plus a rank-4 component, as trained weights roughly are."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 128, generator=gen) * 0.02
    return noise + torch.randn(64, 4, generator=gen) @ torch.randn(4, 128, generator=gen) * 0.05


def _residual(weight, qt, lora_a, lora_b, scaling: float) -> float:
    return float((weight - dequantize(qt) - scaling * lora_b @ lora_a).norm())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_loftq_fits_better_than_plain_quantization(weight, bits) -> None:
    plain = float((weight - dequantize(quantize(weight, bits, 64))).norm())
    qt, lora_a, lora_b = loftq_decompose(weight, bits, 64, "hqq", rank=8, scaling=2.0, iters=3)
    assert lora_a.shape == (8, 128) and lora_b.shape == (64, 8)
    assert (qt.bits, qt.shape) == (bits, (64, 128))
    assert _residual(weight, qt, lora_a, lora_b, 2.0) < 0.85 * plain


@pytest.mark.parametrize("bits", [2, 4])
def test_more_iterations_are_never_worse(weight, bits) -> None:
    errs = [
        _residual(weight, *loftq_decompose(weight, bits, 64, "rtn", 8, 2.0, iters), 2.0)
        for iters in range(1, 6)
    ]
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < errs[0]  # and here they help


def test_the_scaling_is_divided_out_of_the_factors(weight) -> None:
    qt1, a1, b1 = loftq_decompose(weight, 3, 64, "hqq", 4, 1.0)
    qt4, a4, b4 = loftq_decompose(weight, 3, 64, "hqq", 4, 4.0)
    assert torch.equal(qt1.packed, qt4.packed)
    torch.testing.assert_close(4.0 * b4 @ a4, b1 @ a1)
    torch.testing.assert_close(a4.norm(), b4.norm(), rtol=0.5, atol=0)  # balanced split


def test_svd_split_matches_peft(weight) -> None:
    loftq_utils = pytest.importorskip("peft.utils.loftq_utils")
    if not hasattr(loftq_utils, "_low_rank_decomposition"):
        pytest.skip("this peft has no _low_rank_decomposition")
    ref = loftq_utils._low_rank_decomposition(weight, reduced_rank=6)
    b, a = low_rank_split(weight, 6)
    torch.testing.assert_close(b, ref["L"])
    torch.testing.assert_close(a, ref["R"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rank=0), "rank must be an integer in 1..64, got 0"),
        (dict(rank=65), "rank must be an integer in 1..64"),
        (dict(scaling=0.0), "scaling must be a positive number, got 0.0"),
        (dict(iters=0), "iters must be a positive integer, got 0"),
        (dict(bits=9), "bits must be an integer in 1..8"),
    ],
)
def test_bad_arguments_are_refused(weight, kwargs, match) -> None:
    args = dict(bits=4, group_size=64, method="hqq", rank=4, scaling=1.0, iters=1) | kwargs
    with pytest.raises(ValueError, match=match):
        loftq_decompose(weight, **args)


# --- on a tiny Llama -----------------------------------------------------------------------


def _mse(model, ref: torch.Tensor) -> float:
    return float((model(IDS).logits - ref).square().mean())


@pytest.mark.parametrize("method", ["hqq", "symmetric"])
def test_loftq_model_is_closer_to_the_16_bit_model(llama_factory, method) -> None:
    ref = llama_factory()(IDS).logits
    plan = Plan.uniform(3, 2, 8, quant_method=method)  # symmetric: the packed base has no zeros
    plain = _mse(apply_plan(llama_factory(), plan), ref)  # B = 0: the quantised model
    loftq = _mse(apply_plan(llama_factory(), plan, variant=LOFTQ), ref)
    simulated = _mse(apply_plan(llama_factory(), plan, simulated=True, variant=LOFTQ), ref)
    assert loftq < 0.8 * plain
    assert simulated == pytest.approx(loftq, rel=1e-3)  # packed and dense LoftQ agree


def test_loftq_dora_starts_where_loftq_lora_does(llama_factory) -> None:
    plan = Plan.from_lists([2, 3, 4], [4, 8, 4])
    lora = apply_plan(llama_factory(), plan, variant=LOFTQ)
    dora = apply_plan(llama_factory(), plan, variant=AdapterVariant(kind="dora", init="loftq", loftq_iters=3))
    torch.testing.assert_close(dora(IDS).logits, lora(IDS).logits, rtol=0, atol=1e-5)


def test_loftq_skips_16_bit_modules(llama_factory) -> None:
    plan = Plan.from_lists([2, 16, 2], [4, 4, 4])
    model = apply_plan(llama_factory(), plan, variant=LOFTQ)
    layers = model.base_model.model.model.layers
    assert layers[0].mlp.up_proj.lora_B["default"].weight.abs().sum() > 0
    assert layers[1].mlp.up_proj.lora_B["default"].weight.abs().sum() == 0


def test_loftq_adapter_saves_and_reloads(tmp_path, llama_factory) -> None:
    plan = Plan.uniform(3, 2, 8)
    model = apply_plan(llama_factory(), plan, variant=LOFTQ)
    with torch.no_grad():  # stand-in for training
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.01)
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    # The adapter belongs to LoftQ's codes, which apply_plan rebuilds deterministically.
    base = apply_plan(llama_factory(), plan, variant=LOFTQ).unload()
    reloaded = PeftModel.from_pretrained(base, tmp_path, config=lora_config(plan, inspect_model(base)))
    assert torch.equal(reloaded(IDS).logits, expected)


def test_apply_loftq_refuses_a_module_without_an_adapter(llama_factory) -> None:
    plan = Plan.from_lists([2, 2, 2], [4, 0, 4])
    model = apply_plan(llama_factory(), plan)
    path = "model.layers.1.mlp.up_proj"
    with pytest.raises(ValueError, match="must name a LoRA layer"):
        apply_loftq_(model, {path: torch.zeros(128, 64)}, plan)
