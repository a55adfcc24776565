"""vLLM's constraints on a plan: bits 4/8/16, fused q/k/v and gate/up tied, 16-bit embedding and head."""

from __future__ import annotations

import pytest

from qradaptor.export.vllm_constraints import SERVE_BITS, check_vllm_plan, fused_groups, vllm_bits
from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan


@pytest.fixture(scope="module")
def structure(llama_factory):
    return inspect_model(llama_factory())


def _module_plan(structure, override: dict[str, LayerSpec]) -> Plan:
    layers = {
        f"{b}.{n}": LayerSpec(4, 0) for b in range(structure.num_blocks) for n in structure.linear_names
    }
    return Plan({**layers, **override}, structure.num_blocks, group_size=32)


def test_servable_plans_pass(structure) -> None:
    n = structure.num_blocks
    check_vllm_plan(Plan.from_lists(([4, 8, 16] * n)[:n], [8] * n, group_size=32), structure)
    check_vllm_plan(_module_plan(structure, {"0.self_attn.o_proj": LayerSpec(8, 0)}), structure)
    tied = {f"0.self_attn.{p}_proj": LayerSpec(16, 0) for p in "qkv"}  # a whole fused group at 16
    check_vllm_plan(_module_plan(structure, tied), structure)


@pytest.mark.parametrize("bits", [2, 3, 5, 6])
def test_bits_vllm_cannot_serve_are_refused_naming_the_module(structure, bits) -> None:
    n = structure.num_blocks
    plan = Plan.from_lists([4] * (n - 1) + [bits], [0] * n, group_size=32, name="p")
    with pytest.raises(
        ValueError, match=rf"gives model\.layers\.{n - 1}\.self_attn\.q_proj {bits} bits: vLLM"
    ):
        check_vllm_plan(plan, structure)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"1.self_attn.k_proj": LayerSpec(8, 0)}, r"layers\.1\.self_attn\.q_proj 4 bits but .*k_proj 8 bits"),
        ({"0.mlp.up_proj": LayerSpec(16, 0)}, r"layers\.0\.mlp\.gate_proj 4 bits but .*up_proj 16 bits"),
        (
            {"0.self_attn.v_proj": LayerSpec(4, 0, 64)},
            r"v_proj 4 bits \(group size 64\): vLLM fuses q_proj/k_proj/v_proj",
        ),
    ],
)
def test_untied_fused_modules_are_refused(structure, override, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_vllm_plan(_module_plan(structure, override), structure)


def test_quantised_embedding_is_refused(structure) -> None:
    plan = Plan.uniform(structure.num_blocks, 4, 0, group_size=32, embed_bits=8, head_bits=8)
    with pytest.raises(ValueError, match="has embed_bits 8: vLLM does not quantise the embedding"):
        check_vllm_plan(plan, structure)


def test_bit_choices_and_fused_groups(structure) -> None:
    assert vllm_bits(None) == SERVE_BITS == (4, 8, 16)
    assert vllm_bits((4, 16)) == (4, 16)
    with pytest.raises(ValueError, match="--bits 2,4,8 with --serve vllm: .* not 2"):
        vllm_bits((2, 4, 8))
    assert fused_groups(structure) == [
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("mlp.gate_proj", "mlp.up_proj"),
    ]
