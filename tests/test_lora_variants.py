from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel

from qradaptor.build import apply_plan, quantize_model_
from qradaptor.lora import (
    AdaLoraQuantLinear,
    AdapterVariant,
    DoraQuantLayer,
    LoraQuantLinear,
    adalora_kept_ranks,
    lora_config,
    prepare_adalora_,
)
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.modules import QuantLinear

IDS = torch.tensor([[1, 5, 9, 200, 3, 77, 12, 0]])
PLAN = Plan.uniform(3, 4, 4)
ADALORA = AdapterVariant(
    kind="adalora",
    adalora_init_r=6,
    adalora_target_r=3,
    adalora_total_steps=24,
    adalora_tinit=0.1,
    adalora_tfinal=0.25,
    adalora_delta_t=0.1,
)


@pytest.fixture(autouse=True)
def _quiet(one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers/peft deprecation chatter
        yield


def _randomise_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """Stand-in for training: non-zero B (and a moved magnitude) so the adapter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_E" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "magnitude" in name:
                p.mul_(1 + 0.1 * torch.rand(p.shape, generator=gen))


def _adapted_modules(model) -> list[torch.nn.Module]:
    s = inspect_model(model.base_model.model)
    inner = model.base_model.model
    return [inner.get_submodule(s.module_path(b, n)) for b, n, spec in PLAN.iter_modules(s)]


# --- AdapterVariant and bad inputs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(kind="vera"), "kind must be"),
        (dict(init="pissa"), "init must be"),
        (dict(kind="adalora", init="loftq", adalora_total_steps=100), "init='loftq' works with"),
        (dict(kind="adalora"), "adalora_total_steps must be a positive integer"),
        (dict(kind="adalora", adalora_total_steps=0), "adalora_total_steps must be"),
        (dict(loftq_iters=0), "loftq_iters must be a positive integer, got 0"),
        (dict(adalora_init_r=4, adalora_target_r=8), "adalora_target_r must be <= adalora_init_r"),
        (dict(adalora_tinit=1.5), "adalora_tinit must be a fraction"),
        (
            dict(kind="adalora", adalora_total_steps=10, adalora_tinit=0.5, adalora_tfinal=0.5),
            "must leave a pruning phase",
        ),
    ],
)
def test_bad_variants_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        AdapterVariant(**kwargs)


def test_adalora_schedule_in_steps() -> None:
    assert ADALORA.adalora_schedule() == (2, 6, 2)  # 0.1, 0.25, 0.1 of 24 steps, rounded
    assert AdapterVariant(kind="adalora", adalora_total_steps=1000).adalora_schedule() == (100, 200, 10)


def test_adalora_on_a_mixed_plan_prunes_its_adapted_modules(tiny_llama) -> None:
    # Any bits (16-bit block 0 in PEFT's own SVD layers, 2-bit block 1 in ours); the plan's ranks
    # only say which modules are adapted (block 2 is not): every one starts at init_r.
    plan = Plan.from_lists([16, 2, 4], [4, 8, 0])
    model = apply_plan(tiny_llama, plan, variant=ADALORA)
    s = inspect_model(model.base_model.model)
    inner = model.base_model.model
    adapted = [inner.get_submodule(s.module_path(b, n)) for b in (0, 1) for n in s.linear_names]
    assert all(m.lora_A["default"].shape[0] == ADALORA.adalora_init_r for m in adapted)
    assert isinstance(adapted[0].get_base_layer(), torch.nn.Linear)
    assert all(isinstance(m.get_base_layer(), QuantLinear) for m in adapted[len(s.linear_names) :])
    assert not hasattr(inner.get_submodule(s.module_path(2, s.linear_names[0])), "lora_A")
    assert set(adalora_kept_ranks(model).values()) == {ADALORA.adalora_init_r}  # before pruning
    _train(model, ADALORA.adalora_total_steps, adalora=True)
    kept = adalora_kept_ranks(model)
    assert sorted(kept) == sorted(plan.to_rank_pattern(s))
    assert sum(kept.values()) <= ADALORA.adalora_target_r * len(kept) and min(kept.values()) < 6
    live = {n: int((inner.get_submodule(n).lora_E["default"] != 0).sum()) for n in kept}
    assert all(live[n] <= kept[n] for n in kept)  # the pruned singular values are zero


# --- DoRA ----------------------------------------------------------------------------------


def test_dora_on_packed_codes_equals_dora_on_the_dense_copy(llama_factory) -> None:
    plan = Plan.from_lists([2, 3, 8], [4, 4, 4])
    dora = AdapterVariant(kind="dora")
    packed = apply_plan(llama_factory(), plan, variant=dora)
    dense = apply_plan(llama_factory(), plan, simulated=True, variant=dora)  # PEFT's own DoRA
    _randomise_adapters(packed)
    dense.load_state_dict(packed.state_dict(), strict=False)  # same adapter, same magnitudes
    out = packed(IDS).logits
    torch.testing.assert_close(out, dense(IDS).logits, rtol=0, atol=1e-5)
    out.square().mean().backward()
    trained = {n: p for n, p in packed.named_parameters() if p.requires_grad}
    for kind in ("lora_A", "lora_B", "lora_magnitude_vector"):
        grads = [p.grad for n, p in trained.items() if kind in n]
        assert len(grads) == 21 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_dora_magnitude_starts_at_the_column_norms_of_the_codes(tiny_llama) -> None:
    model = apply_plan(tiny_llama, PLAN, variant=AdapterVariant(kind="dora"))
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    assert isinstance(layer, LoraQuantLinear)
    assert isinstance(layer.lora_magnitude_vector["default"], DoraQuantLayer)
    expected = layer.get_base_layer().dequantized_weight().norm(dim=1)  # B = 0 at init
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight, expected)
    assert not hasattr(layer.get_base_layer(), "weight")


def test_dora_trainable_params_are_lora_plus_one_magnitude_per_output(llama_factory) -> None:
    def trainable(model) -> dict[str, int]:
        return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}

    lora = trainable(apply_plan(llama_factory(), PLAN))
    dora_model = apply_plan(llama_factory(), PLAN, variant=AdapterVariant(kind="dora"))
    dora = trainable(dora_model)
    extra = {n: k for n, k in dora.items() if n not in lora}
    assert all("lora_magnitude_vector" in n for n in extra)
    outs = sum(m.get_base_layer().out_features for m in _adapted_modules(dora_model))
    assert len(extra) == 21 and sum(extra.values()) == outs


def test_dora_adapter_saves_and_reloads_to_identical_logits(tmp_path, llama_factory) -> None:
    model = apply_plan(llama_factory(), PLAN, variant=AdapterVariant(kind="dora"))
    _randomise_adapters(model)
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    base = llama_factory()
    structure = quantize_model_(base, PLAN)
    config = lora_config(PLAN, structure, use_dora=True)
    reloaded = PeftModel.from_pretrained(base, tmp_path, config=config)
    assert torch.equal(reloaded(IDS).logits, expected)


# --- AdaLoRA -------------------------------------------------------------------------------


def test_adalora_wraps_packed_layers_with_svd_adapters(tiny_llama) -> None:
    model = apply_plan(tiny_llama, PLAN, variant=ADALORA)
    modules = _adapted_modules(model)
    assert all(isinstance(m, AdaLoraQuantLinear) for m in modules)
    assert all(isinstance(m.get_base_layer(), QuantLinear) for m in modules)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(names) == 3 * 21 and {n.split(".")[-2] for n in names} == {"lora_A", "lora_B", "lora_E"}
    r = ADALORA.adalora_init_r
    assert all(m.lora_A["default"].shape == (r, m.in_features) for m in modules)
    assert all(m.lora_E["default"].abs().sum() == 0 for m in modules)  # E = 0: starts at the base


def _train(model, steps: int, *, adalora: bool = False, lr: float = 1e-2) -> list[float]:
    """AdamW on one fixed random batch; the losses seen, before each step."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (4, 16), generator=gen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        if adalora:
            model.base_model.update_and_allocate(step)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_adalora_prunes_to_the_target_average_rank(tiny_llama) -> None:
    model = apply_plan(tiny_llama, PLAN, variant=ADALORA)
    losses = _train(model, ADALORA.adalora_total_steps, adalora=True)
    assert losses[-1] < losses[0] - 0.5
    pattern = model.peft_config["default"].rank_pattern
    assert len(pattern) == 21
    ranks = [sum(mask) for mask in pattern.values()]
    assert sum(ranks) / len(ranks) <= ADALORA.adalora_target_r
    assert max(ranks) <= ADALORA.adalora_init_r
    # The pruned singular values really are zero in the model.
    live = [int((m.lora_E["default"] != 0).sum()) for m in _adapted_modules(model)]
    assert sum(live) <= ADALORA.adalora_target_r * 21


@pytest.mark.parametrize("pruned", [False, True], ids=["fresh", "pruned"])
def test_adalora_adapter_saves_and_reloads_to_identical_logits(tmp_path, llama_factory, pruned) -> None:
    model = apply_plan(llama_factory(), PLAN, variant=ADALORA)
    if pruned:  # the saved rank_pattern shrinks the tensors; reloading must shrink the layers
        _train(model, ADALORA.adalora_total_steps, adalora=True)
    else:
        _randomise_adapters(model)
    model.eval()
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    base = llama_factory()
    structure = quantize_model_(base, PLAN)
    prepare_adalora_(base, sorted(PLAN.to_rank_pattern(structure)))
    reloaded = PeftModel.from_pretrained(base, tmp_path)
    torch.testing.assert_close(reloaded(IDS).logits, expected, rtol=0, atol=1e-6)
    if pruned:
        ranks = [m.lora_A["default"].shape[0] for m in _adapted_modules(reloaded)]
        assert sum(ranks) <= ADALORA.adalora_target_r * 21 and min(ranks) < ADALORA.adalora_init_r


# --- every variant trains on packed 4-bit codes ----------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        AdapterVariant(kind="dora"),
        AdapterVariant(init="loftq"),
        AdapterVariant(kind="dora", init="loftq", loftq_iters=2),
    ],
    ids=["dora", "lora-loftq", "dora-loftq"],
)
def test_a_few_adamw_steps_lower_the_loss(tiny_llama, variant) -> None:
    model = apply_plan(tiny_llama, PLAN, variant=variant)
    assert all(isinstance(m.get_base_layer(), QuantLinear) for m in _adapted_modules(model))
    losses = _train(model, 8)
    assert losses[-1] < losses[0] - 0.3 and losses[-1] == min(losses)
