from __future__ import annotations

import pytest

from qradaptor.build import apply_plan
from qradaptor.memory import model_tensor_bytes, plan_memory, quantized_nbytes, training_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan


def test_quantized_bytes_by_hand() -> None:
    # 3-bit 576x576 at group 64: 576*576*3/8 code bytes + 576*9 groups * 2 numbers * 2 bytes
    assert quantized_nbytes(576, 576, 3, 64) == 124416 + 20736
    # symmetric: the same codes and one 16-bit scale per group, no zero
    assert quantized_nbytes(576, 576, 3, 64, symmetric=True) == 124416 + 10368


PLANS = [
    Plan.uniform(3, 2, 0),
    Plan.uniform(3, 3, 8),
    Plan.uniform(3, 4, 16),
    Plan.uniform(3, 8, 8),
    Plan.uniform(3, 16, 16),
    Plan.from_lists([2, 16, 4], [16, 0, 8]),
    Plan.from_lists([8, 8, 8], [4, 4, 4], embed_bits=8, head_bits=8),
    Plan.from_lists(
        [4, 16, 5], [8, 0, 4], embed_bits=8, head_bits=8, quant_method="symmetric", group_size=32
    ),
]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name or p.plan_hash)
def test_predicted_bytes_equal_built_tensor_bytes(llama_factory, tied: bool, plan: Plan) -> None:
    model = llama_factory(tied=tied)
    predicted = plan_memory(inspect_model(model), plan, weight_bytes=4)
    built = apply_plan(model, plan)
    assert predicted.total_bytes == model_tensor_bytes(built)
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert predicted.adapter_params == trainable


def test_untied_quantized_head(llama_factory) -> None:
    model = llama_factory(tied=False)
    plan = Plan.uniform(3, 4, 8, head_bits=4)
    assert plan_memory(inspect_model(model), plan, weight_bytes=4).total_bytes == model_tensor_bytes(
        apply_plan(model, plan)
    )


def test_gpt2_bytes(tiny_gpt2) -> None:
    plan = Plan.from_lists([3, 16], [4, 8])
    predicted = plan_memory(inspect_model(tiny_gpt2), plan, weight_bytes=4)
    assert predicted.total_bytes == model_tensor_bytes(apply_plan(tiny_gpt2, plan))


def test_avg_bits_include_metadata(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    assert plan_memory(s, Plan.uniform(3, 4, 16)).avg_bits == pytest.approx(4.5)
    assert plan_memory(s, Plan.uniform(3, 3, 16), weight_bytes=4).avg_bits == pytest.approx(3.5)
    assert plan_memory(s, Plan.uniform(3, 16, 16), weight_bytes=4).avg_bits == 16
    assert plan_memory(s, Plan.from_lists([4, 16, 2], [8, 0, 4])).avg_rank == 4
    # symmetric: bits + 16 / g (a scale per group, no zero)
    assert plan_memory(s, Plan.uniform(3, 4, 16, quant_method="symmetric", group_size=32)).avg_bits == 4.5
    assert plan_memory(s, Plan.uniform(3, 4, 16, quant_method="symmetric")).avg_bits == 4.25


def test_training_memory_parts(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    report = plan_memory(s, Plan.uniform(3, 4, 16))
    t = training_memory(s, report, batch_size=2, seq_len=32)
    assert t.gradients == report.adapter_params * 4 and t.optimizer == report.adapter_params * 8
    assert t.total == t.weights + t.gradients + t.optimizer + t.activations
    ckpt = training_memory(s, report, batch_size=2, seq_len=32, gradient_checkpointing=True)
    assert ckpt.activations < t.activations
    assert training_memory(s, report, batch_size=4, seq_len=32).activations == 2 * t.activations
    with pytest.raises(ValueError, match="batch_size and seq_len must be >= 1"):
        training_memory(s, report, batch_size=0, seq_len=32)


def test_training_memory_of_the_first_blocks_checkpointed(tiny_llama) -> None:
    """K of N blocks checkpointed: the others keep their activations, each checkpointed block keeps
    its input, and one of them is recomputed at a time (with its packed weights dense)."""
    s = inspect_model(tiny_llama)
    report = plan_memory(s, Plan.uniform(3, 4, 16))
    kw = dict(batch_size=2, seq_len=32)
    plain = training_memory(s, report, **kw).activations
    every = training_memory(s, report, **kw, gradient_checkpointing=True).activations
    assert (
        training_memory(s, report, **kw, gradient_checkpointing=True, checkpoint_blocks=3).activations
        == every
    )
    two = training_memory(s, report, **kw, gradient_checkpointing=True, checkpoint_blocks=2).activations
    one = training_memory(s, report, **kw, gradient_checkpointing=True, checkpoint_blocks=1).activations
    # Each block not checkpointed keeps its activations (B) instead of its input (h): B - h more.
    assert every < two < one and two - every == one - two > 0
    assert one > plain  # one block recomputed beside all the others: no saving, the recompute's cost
    assert training_memory(s, report, **kw, checkpoint_blocks=2).activations == plain  # off: ignored
    with pytest.raises(ValueError, match=r"checkpoint_blocks must be 1..3 \(the model's blocks\), got 4"):
        training_memory(s, report, **kw, gradient_checkpointing=True, checkpoint_blocks=4)


def test_training_memory_dropout_and_adapter_terms(tiny_llama) -> None:
    """Hand-computed: per token and block, the tiny Llama's 7 linears have inputs summing to
    6 x 64 + 128 = 512 and outputs 64 + 32 + 32 + 64 + 128 + 128 + 64 = 512."""
    s = inspect_model(tiny_llama)
    report = plan_memory(s, Plan.uniform(3, 4, 8))
    base = training_memory(s, report, batch_size=2, seq_len=16, act_bytes=2)
    tokens_blocks = 2 * 16 * 3

    def extra(**kw) -> int:
        return (
            training_memory(s, report, batch_size=2, seq_len=16, act_bytes=2, **kw).activations
            - base.activations
        )

    assert extra(lora_dropout=True) == tokens_blocks * 512  # one bool per input element
    assert extra(adapter="dora") == tokens_blocks * 512 * (4 + 2)  # fp32 LoRA out + bf16 base out
    assert extra(adapter="adalora") == tokens_blocks * 512 * 4  # fp32 output
    no_adapters = plan_memory(s, Plan.uniform(3, 4, 0))
    plain = training_memory(s, no_adapters, batch_size=2, seq_len=16)
    assert (
        training_memory(s, no_adapters, batch_size=2, seq_len=16, lora_dropout=True, adapter="dora") == plain
    )
    with pytest.raises(ValueError, match="adapter must be one of"):
        training_memory(s, report, batch_size=2, seq_len=16, adapter="ia3")


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward."""
    import torch

    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


@pytest.mark.parametrize(
    "plan", [Plan.uniform(3, 16, 8), Plan.from_lists([4, 16, 2], [16, 0, 4])], ids=["lora16", "mixed"]
)
def test_activation_estimate_matches_saved_tensors(llama_factory, plan: Plan) -> None:
    import torch

    model = llama_factory()
    s = inspect_model(model)
    built = apply_plan(model, plan)
    built.train()
    batch, seq = 2, 32
    ids = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(0))
    measured_blocks = _saved_bytes(built, ids) - batch * seq * 256 * 4  # minus the log-softmax
    report = plan_memory(s, plan, weight_bytes=4)
    predicted = training_memory(s, report, batch_size=batch, seq_len=seq, act_bytes=4)
    predicted_blocks = predicted.activations - batch * seq * 256 * (4 + 8)  # fp32: no upcast copy
    assert 0.85 < predicted_blocks / measured_blocks < 1.15, (predicted_blocks, measured_blocks)
