"""llama.cpp's rules: symmetric codes at group 32 and bits 4/5/8 (Q4_0/Q5_0/Q8_0) or 16 (F16)."""

from __future__ import annotations

import pytest

from qradaptor.export.llama_cpp_constraints import (
    LLAMA_CPP_BITS,
    check_llama_cpp_plan,
    llama_cpp_choices,
    llama_cpp_mismatch,
)
from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan

SYMMETRIC = {"group_size": 32, "quant_method": "symmetric"}


@pytest.fixture(scope="module")
def structure(llama_factory):
    return inspect_model(llama_factory())


def test_choices_not_given_are_llama_cpp_s() -> None:
    assert llama_cpp_choices(None, None, None) == ((4, 5, 8, 16), 32, "symmetric")
    assert llama_cpp_choices((4, 16), 32, "symmetric") == ((4, 16), 32, "symmetric")
    assert LLAMA_CPP_BITS == (4, 5, 8, 16)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (dict(quant_method="hqq"), "--quant-method hqq with --serve llama.cpp: llama.cpp serves"),
        (dict(group_size=64), "--group-size 64 with --serve llama.cpp: llama.cpp serves"),
        (dict(double_quant=True), "--double-quant with --serve llama.cpp: llama.cpp serves"),
        (dict(bits=(3, 4)), "--bits 3,4 with --serve llama.cpp: .*; 3 bits would be re-quantised"),
        (dict(bits=(4, 6)), "--bits 4,6 with --serve llama.cpp: .*; 6 bits would be re-quantised"),
    ],
)
def test_each_choice_llama_cpp_would_re_quantise_is_refused_naming_it(given, message) -> None:
    args = dict(bits=None, group_size=None, quant_method=None) | given
    with pytest.raises(ValueError, match=message) as refused:
        llama_cpp_choices(**args)
    # one line that names what is accepted
    assert "\n" not in str(refused.value)
    assert "--quant-method symmetric, --group-size 32, --bits from 4,5,8,16" in str(refused.value)


def test_a_plan_of_llama_cpp_s_types_passes(structure) -> None:
    n = structure.num_blocks
    check_llama_cpp_plan(Plan.from_lists(([4, 5, 8, 16] * n)[:n], [8] * n, **SYMMETRIC), structure)
    assert llama_cpp_mismatch(Plan.uniform(n, 5, 0, **SYMMETRIC), structure) == ""


@pytest.mark.parametrize(
    ("plan_options", "override", "message"),
    [
        (dict(group_size=32, quant_method="hqq"), {}, "quant method hqq, not symmetric"),
        (dict(group_size=64, quant_method="symmetric"), {}, r"q_proj group size 64; GGUF blocks are 32"),
        (SYMMETRIC, {"1.mlp.down_proj": LayerSpec(3, 0)}, r"layers\.1\.mlp\.down_proj 3 bits"),
        (SYMMETRIC, {"0.mlp.up_proj": LayerSpec(6, 0)}, r"layers\.0\.mlp\.up_proj 6 bits"),
        (SYMMETRIC, {"0.self_attn.v_proj": LayerSpec(4, 0, 64)}, r"v_proj group size 64"),
    ],
)
def test_a_plan_llama_cpp_would_re_quantise_is_refused_naming_the_module(
    structure, plan_options, override, message
) -> None:
    layers = {
        f"{b}.{n}": LayerSpec(4, 0) for b in range(structure.num_blocks) for n in structure.linear_names
    }
    plan = Plan({**layers, **override}, structure.num_blocks, name="p", **plan_options)
    assert llama_cpp_mismatch(plan, structure)
    with pytest.raises(ValueError, match=message):
        check_llama_cpp_plan(plan, structure)
