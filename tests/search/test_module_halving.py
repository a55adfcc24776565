"""The halving search per module: tied items, the GP's per-type coordinates, and the search on
the tiny trained Llama (never worse than the per-module knapsack, ties kept, refusals, resume)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from qradaptor.distributed.study import sqlite_url
from qradaptor.export.vllm_constraints import fused_groups
from qradaptor.models.structure import inspect_model
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import parse_budget, violation
from qradaptor.search.cost import search_work
from qradaptor.search.knapsack import knapsack_genome, knapsack_plan, tie_items
from qradaptor.search.multifidelity import HalvingConfig
from qradaptor.search.pipeline import SearchConfig
from qradaptor.search.profiling import check_given_profile
from qradaptor.search.proxy import ProxyConfig
from qradaptor.search.records import genome_of
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.search.ties import TiedUnits
from qradaptor.search.type_features import type_encoder
from qradaptor.sensitivity_table import SensitivityTable

# --- items and coordinates, on tables alone ----------------------------------------------------


@pytest.fixture(scope="module")
def structure(llama_factory):
    return inspect_model(llama_factory())


def _table(structure, bits=(2, 4, 8), ranks=(4, 8)) -> MemoryTable:
    space = SearchSpace.for_structure(structure, "module", bits=bits, ranks=ranks)
    return MemoryTable.build(structure, space, group_size=32)


def test_tied_items_price_and_expand_like_their_units(structure) -> None:
    table = _table(structure)
    units = TiedUnits.build(table, fused_groups(structure))
    # Per block: q+k+v, o, gate+up, down.
    assert units.items.space.modules == (
        "self_attn.q_proj+self_attn.k_proj+self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj+mlp.up_proj",
        "mlp.down_proj",
    )
    rng = np.random.default_rng(0)
    items = np.stack([rng.integers(0, 3, 12), rng.integers(0, 2, 12)], axis=1)  # (3 blocks x 4, 2)
    expanded = units.expand(items)
    assert int(units.items.bytes_of(items)) == int(table.bytes_of(expanded))
    assert float(units.items.avg_bits_of(items)) == pytest.approx(float(table.avg_bits_of(expanded)))
    assert (
        (expanded[0] == items[0]).all()
        and (expanded[2] == items[0]).all()
        and (expanded[3] == items[1]).all()
    )
    assert (units.collapse(expanded) == items).all()
    untied = expanded.copy()
    untied[1, 0] = (untied[1, 0] + 1) % 3  # k_proj of block 0 leaves q and v
    with pytest.raises(ValueError, match="units of one tied group different choices"):
        units.collapse(untied)
    assert not TiedUnits.build(table).tied and TiedUnits.build(table).items is table


def test_the_knapsack_on_items_is_the_tied_knapsack(structure) -> None:
    table = _table(structure)
    groups = fused_groups(structure)
    values = np.random.default_rng(1).lognormal(0, 1.5, (table.space.num_units, 1)) * [[16.0, 1.0, 0.01]]
    units = TiedUnits.build(table, groups)
    budget = parse_budget("4.2bits")
    on_items = units.expand(knapsack_genome(units.items, units.values(values), budget, rank=8))
    tied = knapsack_genome(table, values, budget, rank=8, items=tie_items(table.space, groups))
    assert (on_items == tied).all()


def test_type_coordinates_are_the_log_kl_per_module_type(structure) -> None:
    table = _table(structure, ranks=(8,))
    space = table.space
    values = np.tile([[8.0, 2.0, 0.5]], (space.num_units, 1))  # every unit alike
    values[space.modules.index("mlp.down_proj") :: 7] *= 10.0  # down_proj ten times as sensitive
    encode = type_encoder(space, values)
    lowest = np.zeros((space.num_units, 2), dtype=np.int64)
    highest = lowest.copy()
    highest[:, 0] = 2
    assert encode(lowest).tolist() == [[1.0] * 7] and encode(highest).tolist() == [[0.0] * 7]
    middle = lowest.copy()
    middle[:, 0] = 1  # every unit at 4 bits: KL 2 of a range 0.5..8 per unit, on a log scale
    floor = 1e-3 * 80 * 3  # 1e-3 of the largest type sum (down_proj: 80 a unit, 3 blocks)
    expected = [np.log((6 + floor) / (1.5 + floor)) / np.log((24 + floor) / (1.5 + floor))] * 6
    expected.append(np.log((60 + floor) / (15 + floor)) / np.log((240 + floor) / (15 + floor)))
    assert encode(middle)[0] == pytest.approx(expected)


# --- the search on the tiny trained Llama --------------------------------------------------------

CONFIG = SearchConfig(
    budget=parse_budget("4.2bits"),
    granularity="module",
    bits=(2, 4, 8),
    ranks=(4, 8),
    bayes=BayesConfig(iterations=2, pool=64),
    group_size=32,
    references=False,
    halving=HalvingConfig(candidates=12, sweep=4),
)
PROXY = ProxyConfig(steps=4, batch_size=4, lr=1e-3, warmup=1, eval_batches=2)


@pytest.fixture(scope="module")
def module_search(trained_llama, pattern_search, tmp_path_factory):
    storage = sqlite_url(tmp_path_factory.mktemp("modules") / "s.db")
    return storage, pattern_search(trained_llama, storage, CONFIG, PROXY)


def test_the_choice_is_the_top_rung_argmin_and_no_worse_than_the_module_knapsack(
    trained_llama, module_search
) -> None:
    _, outcome = module_search
    structure = inspect_model(trained_llama)
    space, table = outcome.space, MemoryTable.build(structure, outcome.space, group_size=32)
    assert space.granularity == "module" and outcome.sensitivity.granularity == "module"
    expected = knapsack_plan(
        structure,
        outcome.sensitivity,
        CONFIG.budget,
        bits=CONFIG.bits,
        rank=8,
        granularity="module",
        group_size=32,
    )
    knapsack = [r for r in outcome.records if r.phase == "knapsack"]
    assert len(knapsack) == 1 and (genome_of(knapsack[0], space) == space.from_plan(expected)).all()
    # Plans per module, not per block: some block has linears at different bits.
    assert any(len(set(r.bits[b * 7 : b * 7 + 7])) > 1 for r in outcome.records for b in range(3))
    assert all(violation(genome_of(r, space), CONFIG.budget, table) == 0 for r in outcome.records)
    assert outcome.chosen.loss == min(r.loss for r in outcome.records)
    assert outcome.chosen.loss <= knapsack[0].loss
    assert {r.phase for r in outcome.records} == {"knapsack", "halving", "bayes"}
    assert len(outcome.screened) >= CONFIG.halving.candidates


def test_running_again_replays_every_module_plan(trained_llama, pattern_search, module_search) -> None:
    storage, first = module_search
    again = pattern_search(trained_llama, storage, CONFIG, PROXY)
    assert again.evaluated == 0 and again.replayed == first.evaluated
    assert again.records == first.records and again.screened == first.screened
    assert all(len(r.bits) == 21 for r in again.records)  # 3 blocks x 7 linears, read back from the study


def test_fused_groups_stay_tied_in_every_scored_plan(trained_llama, pattern_search, tmp_path) -> None:
    structure = inspect_model(trained_llama)
    groups = fused_groups(structure)
    config = replace(CONFIG, tied=tuple(groups), budget=parse_budget("3.8bits"))
    outcome = pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY)
    units = TiedUnits.build(MemoryTable.build(structure, outcome.space, group_size=32), groups)
    scored = [*outcome.records, *outcome.screened]
    assert {r.phase for r in outcome.records} >= {"knapsack", "bayes"} and len(scored) > 12
    for record in scored:
        units.collapse(genome_of(record, outcome.space))  # raises if a group is untied
    # o_proj and down_proj are free: the search does use per-module choices.
    assert any(len(set(r.bits[:7])) > 1 for r in scored)


def _module_profile(structure, bits=(2, 4, 8)) -> SensitivityTable:
    kl = tuple(tuple(4.0 ** -(b - 2) for b in bits) for _ in range(structure.num_blocks * 7))
    return SensitivityTable(
        bits=bits,
        kl=kl,
        tokens=8,
        group_size=32,
        quant_method="hqq",
        granularity="module",
        modules=structure.linear_names,
    )


def test_a_table_of_the_other_granularity_is_refused_naming_both(structure) -> None:
    module_space = SearchSpace.for_structure(structure, "module", bits=(2, 4, 8))
    block_space = SearchSpace.for_structure(structure, "block", bits=(2, 4, 8))
    per_module = _module_profile(structure)
    per_block = SensitivityTable(
        bits=(2, 4, 8), kl=((1.0, 0.3, 0.1),) * 3, tokens=8, group_size=32, quant_method="hqq"
    )
    with pytest.raises(
        ValueError,
        match=r"the halving search at module granularity takes a per-module sensitivity table .*"
        r"got a per-block one \(3 blocks\)",
    ):
        check_given_profile(per_block, structure, module_space, CONFIG)
    with pytest.raises(
        ValueError,
        match=r"the halving search at block granularity takes a per-block sensitivity table .*per-module",
    ):
        check_given_profile(per_module, structure, block_space, replace(CONFIG, granularity="block"))
    check_given_profile(per_module, structure, module_space, CONFIG)  # the right one passes
    # The paper strategy still seeds modules from a per-block profile.
    check_given_profile(per_block, structure, module_space, replace(CONFIG, strategy="paper"))
    wider = SearchSpace.for_structure(structure, "module", bits=(2, 3, 4, 8))
    with pytest.raises(ValueError, match=r"lacks the searched bits \[3\]"):
        check_given_profile(per_module, structure, wider, replace(CONFIG, bits=(2, 3, 4, 8)))
    with pytest.raises(ValueError, match="measured without 8-bit scales"):
        check_given_profile(per_module, structure, module_space, replace(CONFIG, double_quant=True))
    other = replace(per_module, modules=tuple(reversed(structure.linear_names)))
    with pytest.raises(ValueError, match="profiled on another model"):
        check_given_profile(other, structure, module_space, CONFIG)


def test_tied_groups_need_the_halving_search_per_module() -> None:
    groups = (("self_attn.q_proj", "self_attn.k_proj"),)
    with pytest.raises(
        ValueError, match="tied groups are kept by the halving strategy at module granularity"
    ):
        replace(CONFIG, tied=groups, strategy="paper")
    with pytest.raises(ValueError, match="got strategy 'halving' at block granularity"):
        replace(CONFIG, tied=groups, granularity="block")


def test_the_cost_announcement_says_the_profile_is_per_module() -> None:
    def work(modules: int):
        return search_work(
            CONFIG,
            PROXY,
            num_blocks=30,
            block_weights=1,
            calibration_windows=1,
            profile=True,
            modules=modules,
        )

    assert "profile 30 blocks x 7 modules x 3 bit-widths (per module: 7x the forwards" in work(7).summary
    proxies = work(0).window_forwards - (1 + 30 * 3)
    assert work(7).window_forwards - proxies == 1 + 30 * 7 * 3
