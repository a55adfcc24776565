"""Named baseline plans and their rounding, on the structures of the tiny Llama and GPT-2."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from qradaptor.baselines import (
    BASELINE_PLANS,
    FIXED_BITS,
    TRAINING_METHODS,
    baseline_plan,
    largest_remainder,
)
from qradaptor.models.structure import ModelStructure, inspect_model
from qradaptor.plan import Plan


@pytest.fixture(scope="module")
def llama(llama_factory) -> ModelStructure:
    return inspect_model(llama_factory())


@pytest.fixture
def gpt2(tiny_gpt2) -> ModelStructure:
    return inspect_model(tiny_gpt2)


def _norms(structure: ModelStructure, name: str) -> list[float] | None:
    return [1.0 + i for i in range(structure.num_blocks)] if name == "rank-gradient" else None


def _adapter_params(plan: Plan, structure: ModelStructure, block: int) -> int:
    """sum_m r_m (in_m + out_m) over the linears of ``block``."""
    sizes = {info.name: info.in_features + info.out_features for info in structure.linears}
    return sum(plan.spec_for(block, name).rank * sizes[name] for name in structure.linear_names)


# ----- every name -----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("name", BASELINE_PLANS)
def test_every_baseline_is_a_valid_plan_for_the_model(request, which: str, name: str) -> None:
    structure = request.getfixturevalue(which)
    plan = baseline_plan(name, structure, gradient_norms=_norms(structure, name))
    plan.validate(structure)
    assert (plan.name, plan.model_signature, plan.num_blocks) == (
        name,
        structure.signature,
        structure.num_blocks,
    )
    assert Plan.from_json(plan.to_json()) == plan
    specs = [spec for _, _, spec in plan.iter_modules(structure)]
    assert {s.bits for s in specs} == {FIXED_BITS.get(name, 4)}
    expect_embed = 8 if name == "embed8-body4" else 16
    assert (plan.embed_bits, plan.head_bits) == (expect_embed, expect_embed)


def test_uniform_baselines(llama: ModelStructure) -> None:
    lora16 = baseline_plan("lora16", llama, rank=8, bits=3)  # lora16 fixes the bits at 16
    assert (lora16.block_bits(), lora16.block_ranks()) == ([16] * 3, [8] * 3)
    qlora = baseline_plan("qlora", llama, rank=4, bits=3)
    assert (qlora.block_bits(), qlora.block_ranks()) == ([3] * 3, [4] * 3)
    for bits in (4, 3, 2):
        fixed = baseline_plan(f"qlora-{bits}", llama, bits=8)
        assert (fixed.block_bits(), fixed.block_ranks()) == ([bits] * 3, [16] * 3)


@pytest.mark.parametrize("tied", [True, False])
def test_embed8_body4(llama_factory, tied: bool) -> None:
    structure = inspect_model(llama_factory(tied=tied))
    plan = baseline_plan("embed8-body4", structure, rank=8, bits=2)
    plan.validate(structure)  # a tied model needs embed_bits == head_bits
    assert (plan.embed_bits, plan.head_bits) == (8, 8)
    assert (plan.block_bits(), plan.block_ranks()) == ([4] * 3, [8] * 3)


# ----- linear in depth ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("blocks", "rank", "decay"),
    [
        # Highest rank at the top block (L - 1): r/2 at block 0 up to 3r/2.
        (3, 16, [8, 16, 24]),  # exact
        (5, 16, [8, 12, 16, 20, 24]),  # steps of 4, exact
        (2, 8, [4, 12]),
        (4, 3, [2, 3, 3, 4]),  # 1.5, 2.5, 3.5, 4.5: floors 1, 2, 3, 4; the two units left go to
        #                        the ties at .5, lowest index first: blocks 0 and 1
        (1, 16, [16]),
    ],
)
def test_linear_ranks_hand_cases(llama: ModelStructure, blocks: int, rank: int, decay: list[int]) -> None:
    structure = replace(llama, num_blocks=blocks)
    assert baseline_plan("rank-linear-decay", structure, rank=rank).block_ranks() == decay
    assert baseline_plan("rank-linear-growth", structure, rank=rank).block_ranks() == decay[::-1]


@pytest.mark.parametrize("blocks", [2, 5, 7, 30])
@pytest.mark.parametrize("rank", [1, 3, 8, 16, 33])
def test_linear_ranks_keep_the_total_and_are_monotone(llama: ModelStructure, blocks: int, rank: int) -> None:
    structure = replace(llama, num_blocks=blocks)
    decay = baseline_plan("rank-linear-decay", structure, rank=rank, bits=3)
    growth = baseline_plan("rank-linear-growth", structure, rank=rank, bits=3)
    for plan in (decay, growth):
        assert sum(plan.block_ranks()) == rank * blocks and plan.block_bits() == [3] * blocks
    ranks = decay.block_ranks()
    assert all(a <= b for a, b in zip(ranks, ranks[1:], strict=False))  # rising to the top block
    assert growth.block_ranks() == ranks[::-1]
    assert ranks[-1] in (math.floor(3 * rank / 2), math.ceil(3 * rank / 2))
    assert ranks[0] in (math.floor(rank / 2), math.ceil(rank / 2))


# ----- attention / FFN focus ------------------------------------------------------------
@pytest.mark.parametrize(
    ("which", "name", "rank", "focused", "other"),
    [
        # The study's r versus r/2, whatever the groups' sizes.
        ("llama", "rank-attn-focus", 16, 16, 8),
        ("llama", "rank-ffn-focus", 16, 16, 8),
        ("gpt2", "rank-ffn-focus", 7, 7, 3),  # floor(7 / 2)
        ("gpt2", "rank-attn-focus", 1, 1, 1),  # never below 1
        # Budget-matched. Llama: N_attn = 128 + 96 + 96 + 128 = 448, N_ffn = 3 * 192 = 576,
        # P = 16 * 1024.
        ("llama", "rank-attn-focus-matched", 16, 32, 3),  # (16384 - 32 * 448) // 576 = 3
        ("llama", "rank-ffn-focus-matched", 16, 28, 0),  # 2r * 576 > P: 16384 // 576 = 28, 256 // 448
        # GPT-2: N_attn = (64 + 192) + (64 + 64) = 384, N_ffn = 2 * 320 = 640, P = 16 * 1024.
        ("gpt2", "rank-attn-focus-matched", 16, 32, 6),  # (16384 - 12288) // 640 = 6
        ("gpt2", "rank-ffn-focus-matched", 16, 25, 1),  # 16384 // 640 = 25, (16384 - 16000) // 384 = 1
    ],
)
def test_focus_hand_cases(request, which: str, name: str, rank: int, focused: int, other: int) -> None:
    structure = request.getfixturevalue(which)
    plan = baseline_plan(name, structure, rank=rank)
    assert plan.granularity == "module"
    focus_parent = "attn" if name.startswith("rank-attn") else "mlp"
    for block, module, spec in plan.iter_modules(structure):
        in_focus = module.split(".")[0] in (focus_parent, f"self_{focus_parent}")
        assert spec.rank == (focused if in_focus else other), (block, module)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["rank-attn-focus-matched", "rank-ffn-focus-matched"])
@pytest.mark.parametrize("rank", [1, 2, 7, 16, 64])
def test_matched_focus_stays_within_the_uniform_budget(request, which: str, name: str, rank: int) -> None:
    structure = request.getfixturevalue(which)
    plan = baseline_plan(name, structure, rank=rank)
    uniform = Plan.uniform(structure.num_blocks, 4, rank)
    sizes = {info.name: info.in_features + info.out_features for info in structure.linears}
    focus_parent = "attn" if name.startswith("rank-attn") else "mlp"
    for block in range(structure.num_blocks):
        assert _adapter_params(plan, structure, block) <= _adapter_params(uniform, structure, block)
        focused = {m: plan.spec_for(block, m).rank for m in sizes if focus_parent in m.split(".")[0]}
        others = {m: plan.spec_for(block, m).rank for m in sizes if m not in focused}
        assert len(set(focused.values())) == len(set(others.values())) == 1
        r_focus, r_other = next(iter(focused.values())), next(iter(others.values()))
        n_focus, n_other = sum(sizes[m] for m in focused), sum(sizes[m] for m in others)
        budget = rank * (n_focus + n_other)
        assert r_focus == min(2 * rank, budget // n_focus) and r_focus >= rank >= r_other
        assert r_focus * n_focus + (r_other + 1) * n_other > budget  # the other rank is the largest


def test_focus_needs_both_groups(llama: ModelStructure) -> None:
    only_attn = replace(llama, linears=tuple(i for i in llama.linears if i.name.startswith("self_attn")))
    with pytest.raises(ValueError, match="rank-ffn-focus needs attention and FFN linears"):
        baseline_plan("rank-ffn-focus", only_attn)
    with pytest.raises(ValueError, match="rank-attn-focus-matched needs attention and FFN linears"):
        baseline_plan("rank-attn-focus-matched", only_attn)


# ----- gradient -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("norms", "rank", "ranks"),
    [
        ([1.0, 1.0, 2.0], 4, [3, 3, 6]),  # quotas 3, 3, 6 of 12
        ([2.0, 1.0, 1.0], 1, [1, 1, 1]),  # every block at the floor of 1
        # T = 16: quotas 0 and 0.004 fall below 1 and are fixed at 1; the other 14 split 1:3 as
        # 3.5 and 10.5, whose tied remainders go to the lower index.
        ([0.0, 1.0, 3.0, 0.001], 4, [1, 4, 10, 1]),
        ([5.0, 0.0], 8, [15, 1]),
    ],
)
def test_gradient_ranks_hand_cases(
    llama: ModelStructure, norms: list[float], rank: int, ranks: list[int]
) -> None:
    structure = replace(llama, num_blocks=len(norms))
    plan = baseline_plan("rank-gradient", structure, rank=rank, bits=2, gradient_norms=norms)
    assert plan.block_ranks() == ranks and plan.block_bits() == [2] * len(norms)


@pytest.mark.parametrize("rank", [1, 2, 16])
def test_gradient_ranks_keep_the_total_and_the_floor(llama: ModelStructure, rank: int) -> None:
    norms = [0.0, 1e-9, 0.3, 7.0, 2.5, 0.0, 1.1, 40.0]
    plan = baseline_plan("rank-gradient", replace(llama, num_blocks=8), rank=rank, gradient_norms=norms)
    ranks = plan.block_ranks()
    assert sum(ranks) == rank * 8 and min(ranks) >= 1
    if rank > 1:
        assert ranks.index(max(ranks)) == 7


# ----- largest remainder ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("weights", "total", "expected"),
    [
        ([1, 1, 1], 10, [4, 3, 3]),  # 3.33 each: the spare unit goes to the lowest index
        ([0.5, 0.25, 0.25], 3, [1, 1, 1]),  # 1.5, .75, .75: floors 1, 0, 0; remainders .75 win
        ([3, 1], 4, [3, 1]),  # exact
        ([1, 2], 0, [0, 0]),
        ([0.1, 0.2, 0.7], 10, [1, 2, 7]),  # float weights that don't sum to exactly 1.0
        ([0, 5, 0], 7, [0, 7, 0]),
        ([2, 3, 5], 7, [1, 2, 4]),  # 1.4, 2.1, 3.5: floors 1, 2, 3; the spare unit to .5
    ],
)
def test_largest_remainder(weights: list[float], total: int, expected: list[int]) -> None:
    assert largest_remainder(weights, total) == expected


@pytest.mark.parametrize(
    ("weights", "total", "message"),
    [
        ([], 3, "weights must have at least one entry"),
        ([0, 0], 3, "weights must not all be 0"),
        ([1, -1], 3, "weights must be >= 0, got -1"),
        ([1, math.nan], 3, "weights must be finite, got nan"),
        ([1, "2"], 3, "weights must hold real numbers, got '2'"),
        ([1, 2], -1, "total must be an integer >= 0, got -1"),
        ([1, 2], 2.0, "total must be an integer >= 0, got 2.0"),
    ],
)
def test_largest_remainder_bad_inputs(weights: list, total: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        largest_remainder(weights, total)


# ----- bad inputs -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("qlora-5", {}, "baseline must be one of lora16, qlora, .*, rank-gradient, got 'qlora-5'"),
        ("dora", {}, "baseline 'dora' is a training method, not a plan: .*`qra train --method dora`"),
        ("qlora", {"rank": 0}, "rank must be an integer >= 1, got 0"),
        ("qlora", {"rank": True}, "rank must be an integer >= 1, got True"),
        ("qlora", {"bits": 9}, "bits must be an integer in 1..8 or 16 .*got 9"),
        ("rank-linear-decay", {"bits": 0}, "bits must be an integer in 1..8 or 16 .*got 0"),
        ("rank-gradient", {}, "rank-gradient needs gradient_norms.*probe.*gradient_norms"),
        ("rank-gradient", {"gradient_norms": [1.0, 2.0]}, r"one entry per block \(3\), got 2"),
        ("rank-gradient", {"gradient_norms": [0.0, 0.0, 0.0]}, "must not be empty nor all 0"),
        ("rank-gradient", {"gradient_norms": [1.0, -2.0, 1.0]}, "gradient_norms must be >= 0, got -2.0"),
        ("rank-gradient", {"gradient_norms": [1.0, math.inf, 1.0]}, "gradient_norms must be finite, got inf"),
        ("qlora", {"gradient_norms": [1.0, 1.0, 1.0]}, "used by rank-gradient only, not by 'qlora'"),
    ],
)
def test_bad_inputs(llama: ModelStructure, name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        baseline_plan(name, llama, **kwargs)


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_methods_are_not_plan_names(method: str) -> None:
    assert method not in BASELINE_PLANS
