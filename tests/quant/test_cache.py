"""QuantCache: each (layer, bits) fitted once; builds from the cache equal builds without it."""

from __future__ import annotations

import pytest
import torch

from qradaptor.build import apply_plan, quantize_model_
from qradaptor.plan import Plan
from qradaptor.quant import cache as cache_module
from qradaptor.quant.cache import QuantCache

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[3, 7, 11, 200, 5, 9, 1, 0]])


def count_fits(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cache_module.quantize

    def counting(weight, bits, group_size, method, **kwargs):
        calls.append(bits)
        return real(weight, bits, group_size, method, **kwargs)

    monkeypatch.setattr(cache_module, "quantize", counting)
    return calls


def test_a_layer_is_fitted_once_per_bit_width(llama_factory, monkeypatch) -> None:
    calls = count_fits(monkeypatch)
    cache = QuantCache()
    first, second = Plan.from_lists([2, 4, 4], [0, 0, 0]), Plan.from_lists([4, 2, 8], [0, 0, 0])
    quantize_model_(llama_factory(), first, simulated=True, cache=cache)
    assert cache.misses == 21 and cache.hits == 0 and len(cache) == 21
    quantize_model_(llama_factory(), second, simulated=True, cache=cache)
    # block 0 at 4 bits and block 1 at 2 bits are new; block 2 at 8 bits is new: 3 x 7 fits
    assert cache.misses == 42 and cache.hits == 0
    quantize_model_(llama_factory(), Plan.from_lists([2, 2, 4], [0, 0, 0]), simulated=True, cache=cache)
    assert cache.misses == 42 and cache.hits == 21
    assert len(calls) == 42
    assert cache.nbytes == sum(qt.nbytes for qt in cache._entries.values()) > 0


@pytest.mark.parametrize("simulated", [True, False], ids=["simulated", "packed"])
def test_builds_from_the_cache_equal_builds_without(llama_factory, simulated) -> None:
    plan = Plan.from_lists([2, 3, 8], [4, 0, 8])
    cache = QuantCache()
    outputs = []
    for use in (None, cache, cache):  # no cache, a cold cache, a warm cache
        torch.manual_seed(0)
        model = apply_plan(llama_factory(), plan, simulated=simulated, cache=use).eval()
        with torch.no_grad():
            outputs.append(model(input_ids=IDS).logits)
    assert cache.hits == 21
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_models_built_from_the_cache_do_not_share_codes(llama_factory) -> None:
    """LoftQ rewrites codes in place: a packed build gets its own copy of the cached fit."""
    cache = QuantCache()
    plan = Plan.uniform(3, 4, 0)
    model = llama_factory()
    quantize_model_(model, plan, cache=cache)
    layer = model.model.layers[0].self_attn.q_proj
    cached = cache.get(
        "model.layers.0.self_attn.q_proj", torch.zeros(layer.out_features, layer.in_features), 4, 64, "hqq"
    )
    before = cached.packed.clone()
    layer.qweight.zero_()
    assert torch.equal(cached.packed, before)


def test_another_shape_under_the_same_name_is_refitted() -> None:
    cache = QuantCache()
    cache.get("w", torch.randn(8, 64), 4, 64, "rtn")
    qt = cache.get("w", torch.randn(16, 64), 4, 64, "rtn")
    assert qt.shape == (16, 64) and cache.misses == 2
