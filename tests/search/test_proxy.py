from __future__ import annotations

import math

import pytest
import torch

from qradaptor.plan import Plan
from qradaptor.schedule import lr_factor
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator, ProxyScore

T = 32
FAST = ProxyConfig(steps=8, batch_size=4, lr=1e-2, warmup=1, eval_batches=2)


@pytest.fixture
def data(pattern):
    return pattern(16, 0), pattern(8, 1)


def test_training_lowers_the_held_out_loss(tiny_llama, data) -> None:
    score = ProxyEvaluator(tiny_llama, *data, FAST)(Plan.uniform(3, 4, 8))
    assert isinstance(score, ProxyScore)
    assert len(score.train_loss) == FAST.steps
    assert score.tokens == FAST.steps * FAST.batch_size * T
    assert math.isfinite(score.loss) and not score.diverged
    assert score.loss < score.loss_before - 0.1
    assert score.train_loss[-1] < score.train_loss[0]


def test_cache_evaluates_a_plan_once(tiny_llama, data) -> None:
    evaluator = ProxyEvaluator(tiny_llama, *data, ProxyConfig(steps=2, eval_batches=1))
    plan = Plan.uniform(3, 4, 8)
    first = evaluator(plan)
    again = evaluator(Plan.uniform(3, 4, 8, name="same allocation, other name"))
    assert again is first
    assert (evaluator.evaluations, evaluator.hits) == (1, 1)
    assert dict(evaluator.cache) == {plan.plan_hash: first}
    assert evaluator.scores() == [first]
    with pytest.raises(TypeError):
        evaluator.cache["x"] = first  # type: ignore[index]


def test_same_plan_on_fresh_evaluators_gives_the_same_score(llama_factory, data) -> None:
    config = ProxyConfig(steps=3, lr=1e-2, eval_batches=1, lora_dropout=0.1)
    plan = Plan.from_lists([4, 8, 3], [8, 0, 4])
    a = ProxyEvaluator(llama_factory(), *data, config)(plan)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    b = ProxyEvaluator(llama_factory(), *data, config)(plan)
    assert a.loss == b.loss and a.loss_before == b.loss_before and a.train_loss == b.train_loss


def test_layers_are_fitted_once_and_scores_do_not_depend_on_the_cache(llama_factory, data) -> None:
    """A warm quantisation cache (e.g. filled by the profile) changes nothing but the time."""
    from qradaptor.quant.cache import QuantCache

    config = ProxyConfig(steps=2, lr=1e-2, eval_batches=1)
    first, second = Plan.from_lists([4, 8, 3], [8, 0, 4]), Plan.from_lists([3, 8, 4], [4, 4, 8])
    evaluator = ProxyEvaluator(llama_factory(), *data, config)
    evaluator(first)
    assert evaluator.quant_cache.misses == 21 and evaluator.quant_cache.hits == 0
    warm = evaluator(second)
    # block 0 at 3 bits and block 2 at 4 bits are new fits; block 1 at 8 bits is cached
    assert evaluator.quant_cache.misses == 35 and evaluator.quant_cache.hits == 7
    cold = ProxyEvaluator(llama_factory(), *data, config, cache=QuantCache())(second)
    assert (warm.loss, warm.loss_before, warm.train_loss) == (cold.loss, cold.loss_before, cold.train_loss)


def test_base_model_is_unchanged_and_rng_is_not_consumed(tiny_llama, data) -> None:
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    evaluator = ProxyEvaluator(tiny_llama, *data, ProxyConfig(steps=2, eval_batches=1))
    base_before = {k: v.clone() for k, v in evaluator._base.state_dict().items()}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    evaluator(Plan.uniform(3, 2, 8))
    evaluator(Plan.uniform(3, 8, 4))
    assert torch.equal(torch.rand(3), expected)
    for state, ref in ((tiny_llama.state_dict(), before), (evaluator._base.state_dict(), base_before)):
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert all(not p.requires_grad for p in evaluator._base.parameters())


def test_two_bit_plan_scores_worse_than_eight_bit(trained_llama, data) -> None:
    evaluator = ProxyEvaluator(trained_llama, *data, ProxyConfig(steps=2, eval_batches=2))
    two, eight = evaluator(Plan.uniform(3, 2, 8)), evaluator(Plan.uniform(3, 8, 8))
    full = evaluator(Plan.uniform(3, 16, 0))
    assert two.loss_before > 2 * eight.loss_before
    assert eight.loss_before == pytest.approx(full.loss_before, rel=0.05)
    assert two.loss > eight.loss


def test_all_ranks_zero_skips_training(tiny_llama, data) -> None:
    score = ProxyEvaluator(tiny_llama, *data, FAST)(Plan.uniform(3, 4, 0))
    assert score.train_loss == () and score.tokens == 0
    assert score.loss == score.loss_before


def test_held_out_loss_is_the_token_weighted_mean(tiny_llama, data) -> None:
    train, held = data
    evaluator = ProxyEvaluator(tiny_llama, train, held[:6], ProxyConfig(batch_size=4, eval_batches=2))
    with torch.inference_mode():
        logits = tiny_llama(input_ids=held[:6]).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), held[:6, 1:].reshape(-1))
    assert evaluator.held_out_loss(tiny_llama) == pytest.approx(float(expected), rel=1e-5)


def test_divergence_is_recorded_as_inf(tiny_llama, data) -> None:
    train, held = data
    evaluator = ProxyEvaluator(tiny_llama, train, held, ProxyConfig(steps=3, eval_batches=1))
    original = evaluator._train

    def poisoned(model, params):
        with torch.no_grad():
            params[0].fill_(float("nan"))
        return original(model, params)

    evaluator._train = poisoned  # type: ignore[method-assign]
    score = evaluator(Plan.uniform(3, 4, 8))
    assert score.diverged and score.loss == math.inf and score.train_loss == (math.inf,)
    assert math.isfinite(score.loss_before)


def test_a_non_finite_gradient_is_skipped_as_in_training(tiny_llama, data) -> None:
    # Clipped, the NaN would have made every adapter NaN and the plan's score inf.
    train, held = data
    evaluator = ProxyEvaluator(tiny_llama, train, held, ProxyConfig(steps=4, eval_batches=1))
    original = evaluator._train

    def poisoned(model, params):
        calls = {"n": 0}

        def hook(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] == 2 else grad

        params[3].register_hook(hook)
        return original(model, params)

    evaluator._train = poisoned  # type: ignore[method-assign]
    score = evaluator(Plan.uniform(3, 4, 8))
    assert score.skipped_steps == 1 and len(score.train_loss) == 4
    assert math.isfinite(score.loss) and score.loss < score.loss_before


def test_lr_factor_warmup_and_decay() -> None:
    assert [lr_factor(s, 5, 1, "cosine") for s in range(2)] == [0.5, 1.0]
    assert lr_factor(3, 5, 1, "linear") == pytest.approx(0.5)
    assert lr_factor(3, 5, 1, "cosine") == pytest.approx(0.5)
    assert lr_factor(4, 5, 1, "constant") == 1.0
    assert all(lr_factor(s, 5, 2, "linear") > 0 for s in range(5))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", -1),
        ("steps", 2.5),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("warmup", -1),
        ("eval_batches", 0),
        ("seed", -3),
        ("lora_dropout", 1.0),
        ("max_grad_norm", 0.0),
        ("schedule", "step"),
        ("weight_decay", -0.1),
    ],
)
def test_bad_config_values_raise(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ProxyConfig(**{field: value})


def test_bad_ids_raise(tiny_llama, data) -> None:
    train, held = data
    with pytest.raises(ValueError, match="train_ids"):
        ProxyEvaluator(tiny_llama, train.float(), held)
    with pytest.raises(ValueError, match="eval_ids"):
        ProxyEvaluator(tiny_llama, train, held[0])


@pytest.mark.parametrize(
    "lean",
    [
        {"shared_base": True},
        {"gradient_checkpointing": True},
        {"shared_base": True, "gradient_checkpointing": True},
    ],
    ids=["shared-packed", "checkpointing", "both"],
)
def test_the_low_memory_paths_score_as_the_default(trained_llama, data, lean) -> None:
    """Packed candidates on the shared base, and recomputed activations, give the default path's
    scores (to 1e-5; bit-equal on this CPU), and leave the caller's model as it was."""
    config = ProxyConfig(steps=3, lr=1e-2, eval_batches=1, lora_dropout=0.1)
    plans = [Plan.from_lists([4, 8, 3], [8, 0, 4]), Plan.from_lists([2, 16, 4], [16, 4, 0])]
    before = {k: v.clone() for k, v in trained_llama.state_dict().items()}
    flags = [p.requires_grad for p in trained_llama.parameters()]
    default = ProxyEvaluator(trained_llama, *data, config)
    lean_evaluator = ProxyEvaluator(trained_llama, *data, config, **lean)
    for plan in plans:
        a, b = default(plan), lean_evaluator(plan)
        assert math.isclose(a.loss, b.loss, abs_tol=1e-5) and math.isclose(
            a.loss_before, b.loss_before, abs_tol=1e-5
        )
        assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a.train_loss, b.train_loss, strict=True))
    assert all(torch.equal(v, before[k]) for k, v in trained_llama.state_dict().items())
    assert [p.requires_grad for p in trained_llama.parameters()] == flags


def test_the_shared_base_shares_every_tensor_of_the_model(tiny_llama, data) -> None:
    from qradaptor.search.proxy import shared_copy

    copy = shared_copy(tiny_llama)
    ptrs = {t.data_ptr() for t in tiny_llama.state_dict().values()}
    assert {t.data_ptr() for t in copy.state_dict().values()} == ptrs
    assert copy.lm_head.weight is copy.model.embed_tokens.weight  # tied stays tied
    assert not any(p.requires_grad for p in copy.parameters())
    assert all(p.requires_grad for p in tiny_llama.parameters())
    with pytest.raises(ValueError, match="shared_base needs the model on the evaluator's device"):
        ProxyEvaluator(tiny_llama, *data, shared_base=True, device="meta")
