from __future__ import annotations

import json

import pytest

from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan


def test_uniform_and_json_round_trip() -> None:
    plan = Plan.uniform(30, 4, 16)
    assert plan.granularity == "block"
    assert plan.block_bits() == [4] * 30 and plan.block_ranks() == [16] * 30
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.plan_hash == plan.plan_hash
    assert json.loads(plan.to_json())["layers"]["29"] == {"bits": 4, "rank": 16}


def test_hash_changes_with_content_not_name() -> None:
    a = Plan.from_lists([4, 2], [8, 8], name="a")
    assert a.plan_hash == Plan.from_lists([4, 2], [8, 8], name="b").plan_hash
    assert a.plan_hash != Plan.from_lists([4, 3], [8, 8]).plan_hash


def test_module_plan_defaults_missing_modules_to_unquantized_no_adapter(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    plan = Plan({"1.self_attn.q_proj": LayerSpec(3, 4)}, s.num_blocks)
    plan.validate(s)
    assert plan.granularity == "module"
    assert plan.spec_for(1, "self_attn.q_proj") == LayerSpec(3, 4)
    assert plan.spec_for(0, "mlp.up_proj") == LayerSpec(16, 0)


def test_rank_pattern_round_trip(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    plan = Plan.from_lists([4, 4, 4], [8, 0, 16]).for_model(s)
    pattern = plan.to_rank_pattern(s)
    assert pattern["model.layers.0.self_attn.q_proj"] == 8
    assert pattern["model.layers.2.mlp.down_proj"] == 16
    assert not any(".layers.1." in k for k in pattern)
    back = Plan.from_rank_pattern(pattern, s, bits=4)
    assert back.granularity == "block" and back.block_ranks() == [8, 0, 16]
    # a per-module pattern stays per module
    pattern["model.layers.0.mlp.up_proj"] = 2
    mixed = Plan.from_rank_pattern(pattern, s, bits=4)
    assert mixed.granularity == "module" and mixed.spec_for(0, "mlp.up_proj").rank == 2


@pytest.mark.parametrize(
    ("bits", "rank", "message"),
    [
        (0, 8, "bits must be an integer in 1..8 or 16"),
        (12, 8, "bits must be an integer in 1..8 or 16"),
        (4, -1, r"rank must be an integer >= 0 \(0 = no adapter\), got -1"),
        (4, 2.5, "rank must be an integer >= 0"),
    ],
)
def test_bad_layer_specs(bits: int, rank: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LayerSpec(bits, rank)


def test_plan_for_another_model_is_refused(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    with pytest.raises(
        ValueError, match=r"was made for another model: it has 30 blocks .* llama with 3 blocks"
    ):
        Plan.uniform(30, 4, 16).validate(s)
    stamped = Plan.uniform(3, 4, 16, model_signature="0123456789abcdef")
    with pytest.raises(ValueError, match="made for another model"):
        stamped.validate(s)


def test_group_size_checked_against_layers(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    with pytest.raises(
        ValueError,
        match=r"group_size=48 does not divide the input size 64 of model.layers.0.self_attn.q_proj",
    ):
        Plan.uniform(3, 4, 8, group_size=48).validate(s)
    Plan.uniform(3, 16, 8, group_size=48).validate(s)  # nothing quantised: no constraint


def test_tied_model_needs_equal_embed_and_head_bits(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    with pytest.raises(ValueError, match="ties its embedding and head"):
        Plan.uniform(3, 4, 8, embed_bits=8).validate(s)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a plan must be a JSON object"),
        ({"layers": {}}, r"missing the fields \['num_blocks'\]"),
        ({"num_blocks": 2, "layers": {"0": {"bits": 4}}}, r"plan layer '0' must be"),
        ({"num_blocks": 2, "layers": {"0": {"bits": 4, "rank": 8}}}, r"no entry for blocks \[1\]"),
        (
            {"num_blocks": 1, "layers": {"0": {"bits": 4, "rank": 8}}, "quant_method": "gptq"},
            "quant_method must be one of",
        ),
        (
            {"num_blocks": 1, "layers": {"5": {"bits": 4, "rank": 8}}},
            r"must start with a block index in 0..0",
        ),
    ],
)
def test_bad_plan_json(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Plan.from_dict(data)  # type: ignore[arg-type]


def test_invalid_json_text() -> None:
    with pytest.raises(ValueError, match="plan is not valid JSON"):
        Plan.from_json("{not json")


def test_symmetric_plans() -> None:
    from qradaptor.plan import SYMMETRIC_METHOD
    from qradaptor.quant.quantizer import SYMMETRIC

    assert SYMMETRIC_METHOD == SYMMETRIC  # plan.py names it without loading torch
    plan = Plan.uniform(3, 4, 16, quant_method="symmetric", group_size=32)
    assert Plan.from_json(plan.to_json()) == plan and plan.to_dict()["quant_method"] == "symmetric"
    assert plan.plan_hash != Plan.uniform(3, 4, 16, group_size=32).plan_hash
    with pytest.raises(ValueError, match="quant_method 'symmetric' stores one float16 scale .* no zero"):
        Plan.uniform(3, 4, 16, quant_method="symmetric", double_quant=True)
    with pytest.raises(ValueError, match="quant_method 'symmetric' needs bits >= 2"):
        Plan.from_lists([4, 1, 16], [8, 8, 8], quant_method="symmetric")
    with pytest.raises(ValueError, match="needs bits >= 2"):
        Plan.uniform(3, 4, 16, quant_method="symmetric", embed_bits=1)
