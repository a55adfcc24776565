"""The halving strategy: rung sizes, promotion, candidates, and the search on a tiny Llama."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from qradaptor.distributed.study import sqlite_url
from qradaptor.models.structure import inspect_model
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import Budget, parse_budget, violation
from qradaptor.search.candidates import knapsack_candidates, neighbours
from qradaptor.search.knapsack import knapsack_genome
from qradaptor.search.knapsack_ranks import bytes_left_to_ranks, knapsack_genome_ranks
from qradaptor.search.multifidelity import HalvingConfig, promote, run_halving
from qradaptor.search.pipeline import SearchConfig
from qradaptor.search.proxy import ProxyConfig
from qradaptor.search.space import MemoryTable, SearchSpace


def test_rung_sizes_and_steps() -> None:
    config = HalvingConfig(candidates=24, eta=3, rungs=2)
    assert config.sizes() == (24, 8, 3)
    assert config.steps(20) == (0, 7, 20)
    assert HalvingConfig(candidates=10, eta=2, rungs=3).sizes() == (10, 5, 3, 2)
    assert HalvingConfig(candidates=10, eta=2, rungs=3).steps(4) == (0, 1, 2, 4)
    forward_only = HalvingConfig(candidates=24, rungs=0)  # the screen is the top rung
    assert forward_only.sizes() == (24,) and forward_only.steps(0) == (0,)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("candidates", 0, "candidates must be an integer >= 1, got 0"),
        ("eta", 1, "eta must be an integer >= 2, got 1"),
        ("rungs", -1, "rungs must be an integer >= 0, got -1"),
        ("sweep", True, "sweep must be an integer >= 1, got True"),
    ],
)
def test_bad_halving_settings_are_refused(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        HalvingConfig(**{field: value})


def test_promote_keeps_the_lowest_and_always_the_named() -> None:
    losses = [0.5, 0.1, float("inf"), 0.3, 0.1]
    assert promote(losses, 2) == [1, 4]  # ties: earlier first
    assert promote(losses, 3, always=[0]) == [1, 4, 3, 0]
    assert promote(losses, 5) == [1, 4, 3, 0, 2]  # diverged last


def test_unknown_strategy_and_unsupported_combinations_are_refused() -> None:
    budget = parse_budget("4bits")
    with pytest.raises(ValueError, match="strategy must be one of halving, paper, got 'nsga'"):
        SearchConfig(budget=budget, strategy="nsga")
    with pytest.raises(ValueError, match="the no-profile ablation runs with strategy 'paper'"):
        SearchConfig(budget=budget, profile=False)
    SearchConfig(budget=budget, profile=False, granularity="module", strategy="paper")
    assert SearchConfig(budget=budget, granularity="module").profile_granularity == "module"
    assert SearchConfig(budget=budget, granularity="module", strategy="paper").profile_granularity == "block"


@pytest.fixture(scope="module")
def table(llama_factory) -> MemoryTable:
    structure = inspect_model(llama_factory(layers=6))
    space = SearchSpace.for_structure(structure, "block", bits=(2, 3, 4, 8), ranks=(4, 8))
    return MemoryTable.build(structure, space, group_size=32)


def _values(seed: int = 0) -> np.ndarray:
    scale = np.random.default_rng(seed).lognormal(0, 1.5, 6)
    return scale[:, None] * 4.0 ** -(np.array([2, 3, 4, 8])[None, :] - 2.0)  # (6, 4)


@pytest.mark.parametrize("kind", ["avg_bits", "bytes"])
def test_candidates_start_at_the_knapsack_plan_and_all_fit(table, kind) -> None:
    values = _values()
    three_bit_rank8 = int(table.bytes_of(np.ones((6, 2), dtype=np.int64)))
    budget = parse_budget("3.6bits") if kind == "avg_bits" else Budget("bytes", three_bit_rank8)
    sweep = knapsack_candidates(table, values, budget, 6)
    if kind == "avg_bits":  # rank is free: the largest
        assert (sweep[0] == knapsack_genome(table, values, budget, rank=8)).all()
    else:  # the knapsack plan as qra plan makes it (ranks chosen, bits first), then each rank's
        first = knapsack_genome_ranks(table, values, budget, bytes_left_to_ranks((4, 8)))
        assert (sweep[0] == first).all()
        assert values[np.arange(6), first[:, 0]].sum() == pytest.approx(
            values[np.arange(6), knapsack_genome(table, values, budget, rank=4)[:, 0]].sum()
        )
        at_rank = {tuple(g[:, 1]) for g in sweep[1:3]}
        assert (1,) * 6 in at_rank and ((0,) * 6 in at_rank or tuple(first[:, 1]) == (0,) * 6)
    near = neighbours(np.random.default_rng(0), sweep, table, budget, values[:, 0], 10)
    every = sweep + near
    assert len({g.tobytes() for g in every}) == len(every) >= 8
    assert all(violation(g, budget, table) == 0 for g in every)


class FakeRung:
    """A rung objective whose loss is a fixed function of the plan: summed bits, plus an offset."""

    def __init__(self, table: MemoryTable, loss_of) -> None:
        self.phase, self.generation, self.table, self.loss_of = "", 0, table, loss_of
        self.asked: list[tuple[str, tuple[int, ...]]] = []

    def record_many(self, plans, names=None):
        records = []
        for plan in plans:
            genome = self.table.space.from_plan(plan)
            self.asked.append((self.phase, tuple(genome[:, 0])))
            records.append(SimpleNamespace(loss=self.loss_of(genome), phase=self.phase))
        return records


def test_each_rung_promotes_the_best_third_and_always_the_knapsack_plan(table) -> None:
    values = _values()
    budget = parse_budget("3.6bits")
    knapsack = knapsack_genome(table, values, budget, rank=8)

    def loss(genome) -> float:
        # The knapsack plan scores worst on every rung; otherwise more bits on block 5 is better.
        return 99.0 if (genome == knapsack).all() else -float(genome[5, 0]) - 0.01 * genome[:, 1].sum()

    rungs = [FakeRung(table, loss) for _ in range(3)]
    config = HalvingConfig(candidates=18, sweep=4, eta=3, rungs=2)
    out = run_halving(rungs, table, budget, values, config, plan_kwargs={"group_size": 32})
    assert [len(r) for r in out] == [18, 6 + 1, 2 + 1]
    for rung in rungs:
        assert rung.asked[0] == ("knapsack", tuple(knapsack[:, 0]))
    # Rung 1 gets exactly the 6 best of rung 0 besides the knapsack plan.
    below = sorted(r.loss for r in out[0][1:])
    assert sorted(r.loss for r in out[1][1:]) == below[:6]
    assert sorted(r.loss for r in out[2][1:]) == sorted(r.loss for r in out[1][1:])[:2]
    assert [r.phase for r in out[0]] == ["knapsack"] + ["screen"] * 17
    assert [r.phase for r in out[2]] == ["knapsack", "halving", "halving"]


def test_run_halving_needs_one_objective_per_rung(table) -> None:
    with pytest.raises(ValueError, match="run_halving needs 3 rung objectives, got 2"):
        run_halving([FakeRung(table, len)] * 2, table, parse_budget("4bits"), _values(), HalvingConfig())


# --- the strategy in run_search, on the tiny trained Llama ---------------------------------------


CONFIG = SearchConfig(
    budget=parse_budget("3.6bits"),
    bits=(2, 3, 4, 8),
    ranks=(4, 8),
    bayes=BayesConfig(iterations=2, pool=64),
    group_size=32,
    references=False,
    halving=HalvingConfig(candidates=12, sweep=4),
)
PROXY = ProxyConfig(steps=4, batch_size=4, lr=1e-3, warmup=1, eval_batches=2)


def test_the_choice_is_never_worse_than_the_knapsack_plan_on_the_top_rung(
    trained_llama, pattern_search, tmp_path
) -> None:
    outcome = pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), CONFIG, PROXY)
    knapsack = [r for r in outcome.records if r.phase == "knapsack"]
    assert len(knapsack) == 1 and outcome.chosen.loss <= knapsack[0].loss
    assert {r.phase for r in outcome.records} <= {"knapsack", "halving", "bayes"}
    rungs = sorted({r.generation for r in outcome.screened})
    assert rungs == [0, 1] and all(r.tokens == 0 for r in outcome.screened if r.generation == 0)
    assert all(r.tokens > 0 for r in outcome.records)
    # The top rung holds the knapsack plan and the rung-1 plans of lowest loss.
    rung1 = sorted(
        (r for r in outcome.screened if r.generation == 1 and r.phase != "knapsack"), key=lambda r: r.loss
    )
    top = {r.plan_hash for r in outcome.records if r.phase == "halving"}
    assert top == {r.plan_hash for r in rung1[: len(top)]}


def test_running_again_replays_every_rung(trained_llama, pattern_search, tmp_path) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    first = pattern_search(trained_llama, storage, CONFIG, PROXY)
    again = pattern_search(trained_llama, storage, CONFIG, PROXY)
    assert first.evaluated == len(first.records) + len(first.screened)
    assert again.evaluated == 0 and again.replayed == first.evaluated
    assert again.records == first.records and again.screened == first.screened


def test_another_rung_count_reuses_the_screen_of_the_same_study(
    trained_llama, pattern_search, tmp_path
) -> None:
    """Rung studies are named by their steps: changing --rungs keeps the forward-only scores."""
    storage = sqlite_url(tmp_path / "s.db")
    no_bayes = replace(CONFIG, bayes=BayesConfig(iterations=0))
    first = pattern_search(trained_llama, storage, no_bayes, PROXY)
    more_rungs = replace(no_bayes, halving=replace(CONFIG.halving, rungs=2))
    again = pattern_search(trained_llama, storage, more_rungs, PROXY)
    screen = [r for r in first.screened if r.generation == 0]
    assert [r for r in again.screened if r.generation == 0] == screen
    assert again.replayed >= len(screen) + 1  # and the knapsack plan's top-rung score
