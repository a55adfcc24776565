"""The richer space's options: bits 5 and 6, per-entry group sizes, double-quantised metadata.

Each must round-trip through Plan JSON and the memory model: predicted bytes equal built bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from qradaptor.build import apply_plan, quantize_model_
from qradaptor.memory import model_tensor_bytes, plan_memory, quantized_nbytes
from qradaptor.models.structure import inspect_model
from qradaptor.packed import load_packed_base_, save_packed_base
from qradaptor.plan import LayerSpec, Plan
from qradaptor.quant.metaquant import META_BLOCK, dequantize_meta, meta_nbytes, quantize_meta
from qradaptor.quant.modules import QuantLinear, simulated_linear
from qradaptor.quant.quantizer import dequantize, quantize
from qradaptor.search.budget import parse_budget
from qradaptor.search.knapsack import knapsack_plan
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.sensitivity_table import SensitivityTable

# The tiny Llama: hidden 64 (q/k/v/o/gate/up inputs), intermediate 128 (down_proj's input).
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def _module_plan(**kwargs) -> Plan:
    """Bits 5 and 6, and down_proj at group 128, which divides only its input."""
    layers = {}
    for block in range(3):
        for name in MODULES:
            layers[f"{block}.{name}"] = LayerSpec(5 + block % 2, 8, 32 if block else None)
        layers[f"{block}.mlp.down_proj"] = LayerSpec(6, 4, 128)
        layers[f"{block}.mlp.up_proj"] = LayerSpec(3, 0, 16)
        layers[f"{block}.mlp.gate_proj"] = LayerSpec(16, 4, 64)
    return Plan(layers, 3, **kwargs)


PLANS = {
    "group-per-block": Plan({"0": LayerSpec(4, 8, 32), "1": LayerSpec(5, 8), "2": LayerSpec(6, 0, 16)}, 3),
    "group-per-module": _module_plan(),
    "double-quant": Plan.from_lists([2, 5, 8], [4, 8, 16], group_size=16, double_quant=True),
    "both": _module_plan(group_size=16, double_quant=True),
    "double-quant-quantised-head": Plan.from_lists([6, 5, 16], [4, 0, 8], double_quant=True, head_bits=4),
}


@pytest.mark.parametrize("name", PLANS)
def test_predicted_bytes_equal_built_bytes_and_json_round_trips(llama_factory, name: str) -> None:
    plan = PLANS[name]
    assert Plan.from_json(plan.to_json()) == plan
    model = llama_factory(tied=name != "double-quant-quantised-head")
    predicted = plan_memory(inspect_model(model), plan, weight_bytes=4)
    assert predicted.total_bytes == model_tensor_bytes(apply_plan(model, plan))


def test_options_change_the_bytes_as_priced_by_hand() -> None:
    # 576 x 576 at 4 bits: 165888 code bytes; group 64 -> 5184 groups, group 192 -> 1728.
    assert quantized_nbytes(576, 576, 4, 192) == 165888 + 1728 * 2 * 2
    assert quantized_nbytes(576, 576, 4, 64, double_quant=True) == 165888 + 2 * (5184 + 4 * 21)
    assert meta_nbytes(256) == 256 + 4 and meta_nbytes(257) == 257 + 8


def test_defaults_keep_old_json_and_hashes() -> None:
    plan = Plan.from_lists([4, 5], [8, 8])
    data = plan.to_dict()
    assert "double_quant" not in data and data["layers"]["0"] == {"bits": 4, "rank": 8}
    old = '{"num_blocks": 1, "group_size": 64, "layers": {"0": {"bits": 4, "rank": 8}}}'
    assert Plan.from_json(old) == Plan.from_lists([4], [8])
    # An entry at the plan's own group size (or at 16 bits) is the same plan, one spelling.
    same = Plan({"0": LayerSpec(4, 8, 64), "1": LayerSpec(16, 0, 32)}, 2)
    assert same.layers["0"].group_size is None and same.layers["1"].group_size is None
    assert same.plan_hash == Plan.from_lists([4, 16], [8, 0]).plan_hash
    assert Plan.from_lists([4], [8], double_quant=True).plan_hash != Plan.from_lists([4], [8]).plan_hash


def test_bad_group_sizes_are_refused(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    with pytest.raises(ValueError, match="group_size=48 does not divide the input size 64"):
        Plan({"0": LayerSpec(4, 8, 48), "1": LayerSpec(4, 8), "2": LayerSpec(4, 8)}, 3).validate(structure)
    with pytest.raises(
        ValueError, match=r"group_sizes: 128 does not divide the input size 64 of .*\[16, 32, 64\]"
    ):
        SearchSpace.for_structure(structure, group_sizes=(64, 128))
    with pytest.raises(ValueError, match="group_size of layer '0' must be a positive integer, got 0"):
        Plan.from_json('{"num_blocks": 1, "layers": {"0": {"bits": 4, "rank": 8, "group_size": 0}}}')
    with pytest.raises(ValueError, match="double_quant must be true or false"):
        Plan.from_lists([4], [8], double_quant="yes")


def test_meta_codes_dequantise_within_half_a_step() -> None:
    values = torch.rand(3, 300, generator=torch.Generator().manual_seed(0)) * 5 + 0.01
    codes, meta = quantize_meta(values)
    assert codes.dtype == torch.uint8 and meta.shape == (-(-900 // META_BLOCK), 2)
    back = dequantize_meta(codes, meta).float()
    step = meta.float()[torch.arange(900) // META_BLOCK, 0].reshape(3, 300)
    assert torch.all((back - values).abs() <= 0.5 * step + 1e-3 * values)  # + float16 rounding


def test_meta_codes_of_small_values_dequantise_within_half_their_own_step() -> None:
    # An 8-bit fit's scales (weights of std 0.02): block ranges far below 255 x float16's least
    # normal, so the codes must be computed with the small step that is stored, not a clamped one.
    values = torch.rand(2, 512, generator=torch.Generator().manual_seed(1)) * 6e-4 + 1e-5
    codes, meta = quantize_meta(values)
    back = dequantize_meta(codes, meta).float()
    step = meta.float()[torch.arange(1024) // META_BLOCK, 0].reshape(2, 512)
    assert torch.all(step < torch.finfo(torch.float16).tiny)
    assert torch.all((back - values).abs() <= 0.5 * step + 1e-3 * values + 6e-8)  # + float16 rounding
    # A block of equal values has step 0 and comes back exactly.
    same = torch.full((300,), 3e-4)
    assert torch.equal(dequantize_meta(*quantize_meta(same)), same.to(torch.float16))


@pytest.mark.parametrize("bits", [6, 8])
def test_double_quantised_fit_at_a_real_weight_scale_stays_close(bits: int) -> None:
    w = 0.02 * torch.randn(64, 256, generator=torch.Generator().manual_seed(bits))
    plain, dq = quantize(w, bits, 64), quantize(w, bits, 64, double_quant=True)
    err_plain = float((dequantize(plain) - w).norm() / w.norm())
    err_dq = float((dequantize(dq) - w).norm() / w.norm())
    assert err_dq < 1.25 * err_plain  # 19x at 8 bits with the clamped step (2026-12-06)


@pytest.mark.parametrize("bits", [3, 5, 6])
def test_double_quantised_fit_stores_8_bit_metadata_and_stays_close(bits: int) -> None:
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(bits))
    plain, dq = quantize(w, bits, 16), quantize(w, bits, 16, double_quant=True)
    assert dq.scale.dtype == torch.uint8 and dq.zero.dtype == torch.uint8 and dq.double_quant
    assert dq.nbytes == quantized_nbytes(96, 128, bits, 16, double_quant=True) < plain.nbytes
    err_plain = float((dequantize(plain) - w).norm() / w.norm())
    err_dq = float((dequantize(dq) - w).norm() / w.norm())
    assert err_dq < 1.1 * err_plain
    # The packed module and the simulated (dense) one compute the same function.
    x = torch.randn(2, 128)
    dense = simulated_linear(w, None, bits, 16, fitted=dq)
    assert torch.allclose(QuantLinear(dq, None, torch.float32)(x), dense(x), atol=1e-5)


def _tables(num_blocks: int, bits=(2, 3, 4, 5, 6, 8)) -> list[SensitivityTable]:
    """Group 32 a little better than group 64, blocks differing by orders of magnitude."""
    scale = np.random.default_rng(1).lognormal(0, 1.5, num_blocks)
    return [
        SensitivityTable(
            bits=bits,
            kl=tuple(tuple(float(s * f * 4.0 ** -(b - 2)) for b in bits) for s in scale),
            tokens=64,
            group_size=g,
            quant_method="hqq",
        )
        for g, f in ((32, 1.0), (64, 1.05))
    ]


@pytest.mark.parametrize("budget", [3.1, 5.3])
def test_knapsack_over_bits_and_group_sizes_is_exact(llama_factory, budget) -> None:
    structure = inspect_model(llama_factory())
    tables = _tables(3)
    made = knapsack_plan(structure, tables, parse_budget(f"{budget}bits"), group_size=32)
    assert plan_memory(structure, made).avg_bits <= budget + 1e-9
    space = SearchSpace.for_structure(structure, bits=tables[0].bits, ranks=(16,), group_sizes=(32, 64))
    price = MemoryTable.build(structure, space, group_size=32)
    kl = {(b, t.group_size): t.column(b) for t in tables for b in t.bits}
    # Brute force over every (bits, group size) of every block.
    genomes = np.array(list(itertools.product(range(len(space.quant_choices)), repeat=3)))
    genomes = np.stack([genomes, np.zeros_like(genomes)], axis=-1)  # (n, 3, 2)
    fits = price.avg_bits_of(genomes) <= budget + 1e-9
    totals = [sum(kl[space.quant_choices[i]][u] for u, i in enumerate(g[:, 0])) for g in genomes[fits]]
    got = sum(kl[(s.bits, made.group_size_of(s))][int(k)] for k, s in made.layers.items())
    assert got == pytest.approx(min(totals))
    assert {made.group_size_of(s) for s in made.layers.values()} <= {32, 64}


def test_a_knapsack_plan_with_group_sizes_builds_as_priced(llama_factory) -> None:
    model = llama_factory()
    structure = inspect_model(model)
    tables = [dataclasses.replace(t, double_quant=True) for t in _tables(3)]
    made = knapsack_plan(structure, tables, parse_budget("5bits"), group_size=32, double_quant=True)
    assert any(s.group_size == 64 for s in made.layers.values())  # the option is used
    assert Plan.from_json(made.to_json()) == made
    assert plan_memory(structure, made, weight_bytes=4).total_bytes == model_tensor_bytes(
        apply_plan(model, made)
    )


def test_memory_table_with_group_sizes_prices_genomes_like_the_memory_model(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    space = SearchSpace.for_structure(
        structure, "module", bits=(2, 5, 6, 16), ranks=(0, 8), group_sizes=(32, 64)
    )
    assert space.quant_choices[:3] == ((2, 64), (2, 32), (5, 64)) and space.quant_choices[-1] == (16, None)
    table = MemoryTable.build(structure, space, double_quant=True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        genome = np.stack([rng.integers(0, 7, space.num_units), rng.integers(0, 2, space.num_units)], axis=1)
        plan = space.to_plan(genome, double_quant=True)
        assert int(table.bytes_of(genome)) == plan_memory(structure, plan).total_bytes
        assert float(table.avg_bits_of(genome)) == pytest.approx(plan_memory(structure, plan).avg_bits)
        assert np.array_equal(space.from_plan(Plan.from_json(plan.to_json())), genome)


def test_knapsack_refuses_a_table_of_another_quantiser(llama_factory) -> None:
    structure = inspect_model(llama_factory())
    with pytest.raises(
        ValueError, match="with hqq, the plan quantises at group size 32 with hqq, double-quantised"
    ):
        knapsack_plan(structure, _tables(3)[0], parse_budget("4bits"), group_size=32, double_quant=True)
    with pytest.raises(ValueError, match=r"cover group sizes \[32, 64\], the choices need \[16, 64\]"):
        from qradaptor.search.knapsack import unit_values

        unit_values(SearchSpace(3, bits=(2, 4), group_sizes=(16, 64)), _tables(3))


def test_packed_base_round_trips_group_sizes_and_double_quant(llama_factory, tmp_path) -> None:
    plan = _module_plan(group_size=16, double_quant=True)
    model = llama_factory()
    built = copy.deepcopy(model)
    structure = quantize_model_(built, plan)
    save_packed_base(built, structure, plan, tmp_path / "base.safetensors", model_fingerprint="w")
    loaded = copy.deepcopy(model)
    load_packed_base_(loaded, plan, tmp_path / "base.safetensors")
    a, b = built.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        loaded.model.layers[0].mlp.down_proj.group_size == 128
        and loaded.model.layers[0].mlp.down_proj.double_quant
    )
