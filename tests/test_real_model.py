"""End-to-end checks on the real embedded SmolLM2-135M-Instruct (fp32, CPU).

The loss tests evaluate 4 windows of 256 tokens of held-out BoolQ Wikipedia passages. The
model's weights come from a Q4_1 GGUF, so "16-bit" here means those weights dequantised.
Measured on a 2-core CPU (rtn, group 64): 16 bits 3.401, 8 bits 3.401, 4 bits 3.735,
3 bits 5.576, 2 bits 13.34 nats/token (8 windows: 3.334, 3.334, 3.682, 5.644, 13.77, at twice
the time). The whole file takes about 40 s.
"""

from __future__ import annotations

import copy

import pytest
import torch

from qradaptor.build import apply_plan, quantize_model_
from qradaptor.memory import model_tensor_bytes, plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan

pytestmark = [pytest.mark.slow, pytest.mark.embedded]

BITS_DESCENDING = (16, 8, 4, 3, 2)
SEQ_LEN, NUM_SEQUENCES, SEED = 256, 4, 0
MAX_LOSS_16BIT = 3.5
"""Nats/token; measured 3.401. A broken load or tokenizer gives ~ln(49152) = 10.8 or more."""
LOSSLESS_TOLERANCE = 0.01
"""8-bit codes of these weights are near-exact: the loss may move either way by ~1e-4."""


@pytest.fixture(scope="module")
def loaded():
    from qradaptor.models.loading import load_model

    return load_model(None)


@pytest.fixture(scope="module")
def heldout_ids(loaded) -> torch.Tensor:
    from qradaptor.data import load_texts, pack_texts

    texts = load_texts("embedded:boolq-heldout")
    return pack_texts(texts, loaded.tokenizer, SEQ_LEN, num_sequences=NUM_SEQUENCES, seed=SEED)


@torch.no_grad()
def _mean_token_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    return float(model(input_ids=ids, labels=ids).loss)


@pytest.fixture(scope="module")
def losses(loaded, heldout_ids) -> dict[int, float]:
    """bits -> mean token loss with every block quantised at that many bits (rtn, dense)."""
    num_blocks = inspect_model(loaded.model).num_blocks
    result = {16: _mean_token_loss(loaded.model, heldout_ids)}
    for bits in BITS_DESCENDING[1:]:
        model = copy.deepcopy(loaded.model)
        quantize_model_(model, Plan.uniform(num_blocks, bits, 0, quant_method="rtn"), simulated=True)
        result[bits] = _mean_token_loss(model, heldout_ids)
        del model
    return result


def _report(losses: dict[int, float]) -> str:
    return ", ".join(f"{b} bits: {loss:.4f}" for b, loss in losses.items())


def test_heldout_loss_of_real_model(losses) -> None:
    assert losses[16] < MAX_LOSS_16BIT, (
        f"mean token loss on held-out BoolQ passages is {losses[16]:.4f} nats, "
        f"expected < {MAX_LOSS_16BIT} (all measured: {_report(losses)})"
    )


def test_loss_rises_as_bits_fall(losses) -> None:
    assert losses[8] > losses[16] - LOSSLESS_TOLERANCE, (
        f"8-bit should be within {LOSSLESS_TOLERANCE} of 16-bit or above; {_report(losses)}"
    )
    for wider, narrower in zip(BITS_DESCENDING[1:], BITS_DESCENDING[2:], strict=False):
        assert losses[narrower] > losses[wider], (
            f"loss should rise from {wider} to {narrower} bits; measured {_report(losses)}"
        )
    # 2-bit rtn wrecks a 135M model; 4-bit costs a few tenths of a nat.
    assert losses[4] - losses[16] < 1.0, f"4-bit costs too much: {_report(losses)}"


def test_predicted_bytes_equal_built_bytes_for_a_mixed_plan(loaded) -> None:
    structure = inspect_model(loaded.model)
    n = structure.num_blocks
    plan = Plan.from_lists(
        [(2, 3, 4, 8, 16)[i % 5] for i in range(n)],
        [(0, 4, 8, 16, 2, 32)[i % 6] for i in range(n)],
        quant_method="rtn",
    )
    predicted = plan_memory(structure, plan, weight_bytes=4)
    built = apply_plan(copy.deepcopy(loaded.model), plan)
    built_bytes = model_tensor_bytes(built)
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert (predicted.total_bytes, predicted.adapter_params) == (built_bytes, trainable), (
        f"predicted {predicted.total_bytes} bytes / {predicted.adapter_params} adapter params, "
        f"built {built_bytes} bytes / {trainable} trainable params"
    )


def test_built_model_has_the_planned_bits_and_ranks_everywhere(loaded) -> None:
    from qradaptor.lora import LoraQuantLinear
    from qradaptor.quant.modules import QuantLinear

    structure = inspect_model(loaded.model)
    plan = Plan.uniform(structure.num_blocks, 4, 8, quant_method="rtn")
    base = apply_plan(copy.deepcopy(loaded.model), plan).get_base_model()
    wrong = []
    checked = 0
    for block, name, spec in plan.iter_modules(structure):
        path = structure.module_path(block, name)
        module = base.get_submodule(path)
        inner = getattr(module, "base_layer", None)
        found = (
            type(module).__name__,
            type(inner).__name__,
            getattr(inner, "bits", None),
            getattr(module, "r", {}).get("default"),
        )
        if not (
            isinstance(module, LoraQuantLinear)
            and isinstance(inner, QuantLinear)
            and inner.bits == spec.bits
            and module.r["default"] == spec.rank
            and module.lora_A["default"].weight.shape == (spec.rank, inner.in_features)
            and module.lora_B["default"].weight.shape == (inner.out_features, spec.rank)
            and module.scaling["default"] == pytest.approx(plan.alpha / spec.rank)
        ):
            wrong.append(f"{path}: {found}")
        checked += 1
    assert checked == 30 * 7
    assert not wrong, f"{len(wrong)} of {checked} modules differ from the plan, e.g. {wrong[:3]}"
