"""The whole search on a tiny trained Llama: budget, choice, references, resume after SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qradaptor.distributed.study import sqlite_url
from qradaptor.models.structure import inspect_model
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import parse_budget, violation
from qradaptor.search.initial import initial_population
from qradaptor.search.multifidelity import HalvingConfig
from qradaptor.search.pipeline import SearchConfig
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator
from qradaptor.search.records import genome_of
from qradaptor.search.space import MemoryTable, SearchSpace

PROXY = ProxyConfig(steps=4, batch_size=4, lr=1e-2, warmup=1, eval_batches=2)
CONFIG = SearchConfig(
    budget=parse_budget("3.6bits"),
    strategy="paper",
    bits=(2, 3, 4, 8),
    ranks=(4, 8),
    population=4,
    generations=4,
    bayes=BayesConfig(iterations=3, pool=64),
    group_size=32,
    references=False,
)


def table_for(model, config: SearchConfig = CONFIG) -> MemoryTable:
    structure = inspect_model(model)
    space = SearchSpace.for_structure(structure, config.granularity, bits=config.bits, ranks=config.ranks)
    return MemoryTable.build(structure, space, group_size=config.group_size)


GENTLE_PROXY = replace(PROXY, lr=1e-3)
"""Proxy steps that adapt without washing out what quantisation did: at lr 1e-2 four steps
recover so much that the proxy ranks plans of one budget by its own noise."""


@pytest.mark.parametrize("strategy", ["halving", "paper"])
def test_search_beats_random_plans_of_the_same_budget_for_every_seed(
    idle_odd_llama8, pattern, pattern_search, tmp_path, strategy
) -> None:
    """On a model where plans differ, every seed's choice is about as good as the best of 12
    random plans and far better than the typical one.

    Random plans are drawn as the no-profile initial population: filled to the budget too.
    """
    table = table_for(idle_odd_llama8)
    evaluator = ProxyEvaluator(idle_odd_llama8, pattern(16, 0), pattern(8, 1), GENTLE_PROXY)
    genomes = initial_population(np.random.default_rng(99), 12, table, CONFIG.budget, None)
    random_losses = [evaluator(table.space.to_plan(g, group_size=32)).loss for g in genomes]
    best, median = min(random_losses), float(np.median(random_losses))
    # The premise: where a plan puts its bits matters here (0.0292 vs 0.0344 when written).
    assert median > 1.1 * best, sorted(random_losses)
    for seed in range(3):
        outcome = pattern_search(
            idle_odd_llama8,
            sqlite_url(tmp_path / f"{seed}.db"),
            replace(CONFIG, seed=seed, strategy=strategy),
            GENTLE_PROXY,
        )
        chosen = outcome.chosen.loss
        # No more fine-tune tokens than the random plans took (halving's rung 0 tunes nothing).
        tuned = sum(r.tokens for r in (*outcome.records, *outcome.screened))
        assert 0 < tuned <= len(random_losses) * GENTLE_PROXY.steps * GENTLE_PROXY.batch_size * 32
        # Closes at least 80% of the gap from the median random plan to the best of 12.
        assert chosen <= best + 0.2 * (median - best), (seed, chosen, sorted(random_losses))


def test_chosen_plan_is_the_lowest_loss_within_the_budget(trained_llama, pattern_search, tmp_path) -> None:
    config = replace(CONFIG, references=True)
    outcome = pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY)
    table = table_for(trained_llama)
    phases = [r.phase for r in outcome.records]
    assert phases[:4] == ["reference"] * 4 and {"initial", "nsga2", "bayes"} <= set(phases)
    assert [r.name for r in outcome.records[:4]] == [f"uniform-{b}bit-r8" for b in (2, 3, 4, 8)]
    feasible = [r for r in outcome.records if violation(genome_of(r, table.space), CONFIG.budget, table) == 0]
    assert all(r.avg_bits <= 3.6 for r in feasible)
    assert outcome.chosen == min(feasible, key=lambda r: (r.loss, r.bytes, r.number))
    assert outcome.plan.plan_hash == outcome.chosen.plan_hash
    assert outcome.plan.block_bits() == list(outcome.chosen.bits)
    assert outcome.chosen.number in outcome.pareto or outcome.chosen.phase == "reference"
    assert outcome.sensitivity is not None and len(outcome.unit_sensitivity) == 3
    assert outcome.evaluated == len(outcome.records) and outcome.replayed == 0


def test_running_again_replays_every_trial_and_tunes_nothing(trained_llama, pattern_search, tmp_path) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    first = pattern_search(trained_llama, storage, CONFIG, PROXY)
    again = pattern_search(trained_llama, storage, CONFIG, PROXY)
    assert again.evaluated == 0 and again.replayed == len(first.records)
    assert again.records == first.records and again.chosen == first.chosen


def test_budget_below_the_smallest_plan_is_refused_before_any_work(
    trained_llama, pattern_search, tmp_path
) -> None:
    config = replace(CONFIG, budget=parse_budget("2.5bits"))
    with pytest.raises(ValueError, match=r"below the smallest plan of the search space: 3 avg bits"):
        pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY)
    assert not (tmp_path / "s.db").exists()


def test_budget_above_the_largest_plan_returns_it_and_says_so(
    trained_llama, pattern_search, tmp_path
) -> None:
    config = replace(CONFIG, budget=parse_budget("16bits"))
    outcome = pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY)
    assert "above the largest plan" in outcome.note and "9 avg bits" in outcome.note
    assert outcome.chosen.bits == (8, 8, 8) and outcome.chosen.ranks == (8, 8, 8)
    assert len(outcome.records) == 1


def test_resume_with_another_search_space_is_refused_and_keeps_the_study(
    trained_llama, pattern_search, tmp_path
) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    one_generation = replace(CONFIG, generations=1, bayes=BayesConfig(iterations=0))
    first = pattern_search(trained_llama, storage, one_generation, PROXY)
    with pytest.raises(ValueError, match=r"ranks: study has \[4, 8\], this run has \[4, 8, 16\]"):
        pattern_search(trained_llama, storage, replace(CONFIG, ranks=(4, 8, 16)), PROXY)
    again = pattern_search(trained_llama, storage, one_generation, PROXY)
    assert again.evaluated == 0 and again.records == first.records


def test_resume_on_another_model_is_refused(trained_llama, llama_factory, pattern_search, tmp_path) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    initial_only = replace(CONFIG, generations=0, bayes=BayesConfig(iterations=0))
    pattern_search(trained_llama, storage, initial_only, PROXY)
    other = llama_factory(tied=False, initializer_range=0.1, seed=1)
    with pytest.raises(ValueError, match=r"weights: study has"):
        pattern_search(other, storage, initial_only, PROXY)


_CHILD = """
import importlib.util, sys, torch

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# SIGKILLed by itself once its fourth trial is stored COMPLETE, wherever the machine's load
# puts that moment (a parent polling the database could be starved past the search's end).
# A trial scored here is stored whole (a COMPLETE template, through _create_new_trial, which
# Optuna's cache calls); a worker's claimed one is completed (set_trial_state_values).
import os, signal, optuna
RDB, COMPLETE = optuna.storages.RDBStorage, optuna.trial.TrialState.COMPLETE
completed = []
def count(state):
    if state == COMPLETE:
        completed.append(state)
        if len(completed) == 4:
            os.kill(os.getpid(), signal.SIGKILL)
create, set_state = RDB._create_new_trial, RDB.set_trial_state_values
def _create_new_trial(self, study_id, template_trial=None):
    trial = create(self, study_id, template_trial)
    count(trial.state)
    return trial
def set_trial_state_values(self, trial_id, state, values=None):
    changed = set_state(self, trial_id, state, values)
    count(state)
    return changed
RDB._create_new_trial, RDB.set_trial_state_values = _create_new_trial, set_trial_state_values

torch.set_num_threads(1)
top = load("top_conftest", {tests!r} + "/conftest.py")
this = load("this_test", {tests!r} + "/search/test_pipeline.py")
model = top.make_tiny_llama(tied=False, initializer_range=0.1)
model.load_state_dict(torch.load({weights!r}))
config = this.replace(this.CONFIG, strategy={strategy!r})
model = model.eval().requires_grad_(False)
top.search_on_pattern(model, {storage!r}, config, this.GENTLE_PROXY)
"""


def _complete_trials(db: Path) -> list[tuple[int, int, str]]:
    """(study id, trial number, plan hash) of every finished trial, of every study (rung) in ``db``."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute(
                "select t.study_id, t.number, a.value_json from trials t join trial_user_attributes a "
                "on a.trial_id = t.trial_id where t.state = 'COMPLETE' and a.key = 'plan_hash'"
            ).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
    return sorted(rows)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["paper", "halving"])
def test_a_search_killed_mid_run_resumes_without_losing_or_repeating_a_trial(
    trained_llama, pattern_search, tmp_path, strategy
) -> None:
    config = replace(CONFIG, strategy=strategy)
    uninterrupted = pattern_search(trained_llama, sqlite_url(tmp_path / "whole.db"), config, GENTLE_PROXY)
    scored = len(uninterrupted.records) + len(uninterrupted.screened)
    # The child process runs the same search and is SIGKILLed after a few finished trials.
    weights = tmp_path / "weights.pt"
    torch.save(trained_llama.state_dict(), weights)
    db = tmp_path / "killed.db"
    script = _CHILD.format(
        tests=str(Path(__file__).parents[1]), weights=str(weights), storage=sqlite_url(db), strategy=strategy
    )
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        _, err = child.communicate(timeout=300)
    finally:
        child.kill()  # a child that never got to its fourth trial
    before = _complete_trials(db)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert 4 <= len(before) < scored

    resumed = pattern_search(trained_llama, sqlite_url(db), config, GENTLE_PROXY)
    after = _complete_trials(db)
    assert set(before) <= set(after)  # nothing lost
    assert len({(study, h) for study, _, h in after}) == len(after) == scored  # nothing repeated
    assert resumed.replayed == len(before) and resumed.evaluated == len(after) - len(before)
    for rungs in ("records", "screened"):
        assert [(r.plan_hash, r.loss) for r in getattr(resumed, rungs)] == [
            (r.plan_hash, r.loss) for r in getattr(uninterrupted, rungs)
        ]
    assert resumed.chosen.plan_hash == uninterrupted.chosen.plan_hash


def test_a_double_quantised_search_prices_builds_and_profiles_8_bit_scales(
    trained_llama, pattern_search, tmp_path
) -> None:
    config = replace(
        CONFIG,
        strategy="halving",
        double_quant=True,
        halving=HalvingConfig(candidates=6, sweep=3, eta=3, rungs=1),
        bayes=BayesConfig(iterations=0),
    )
    outcome = pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY)
    structure = inspect_model(trained_llama)
    space = SearchSpace.for_structure(structure, "block", bits=config.bits, ranks=config.ranks)
    eight_bit = MemoryTable.build(structure, space, group_size=32, double_quant=True)
    sixteen_bit = table_for(trained_llama, config)
    genome = genome_of(outcome.chosen, space)
    assert outcome.plan.double_quant and outcome.sensitivity.double_quant
    assert violation(genome, config.budget, eight_bit) == 0
    # At group 32, 16-bit scales and zeros cost 1 bit a weight, 8-bit ones about 0.5: 3.6 bits
    # afford 3-bit blocks only with the latter, and the search used that room.
    assert violation(genome, config.budget, sixteen_bit) > 0
    assert all(r.bytes == int(eight_bit.bytes_of(genome_of(r, space))) for r in outcome.records)


def test_a_profile_of_other_scales_is_refused_by_the_search(
    trained_llama, pattern, pattern_search, tmp_path
) -> None:
    from qradaptor.sensitivity import profile_sensitivity

    plain = profile_sensitivity(trained_llama, pattern(4, 2), bits=[2, 3, 4, 8], group_size=32)
    config = replace(
        CONFIG, strategy="halving", double_quant=True, halving=HalvingConfig(candidates=6, sweep=3, rungs=1)
    )
    with pytest.raises(
        ValueError, match="measured without 8-bit scales and zeros .* the search quantises with"
    ):
        pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY, sensitivity=plain)


def test_a_profile_of_another_quantiser_is_refused_by_the_search(
    trained_llama, pattern, pattern_search, tmp_path
) -> None:
    from qradaptor.sensitivity import profile_sensitivity

    hqq = profile_sensitivity(trained_llama, pattern(4, 2), bits=[2, 3, 4, 8], group_size=32)
    config = replace(
        CONFIG,
        strategy="halving",
        quant_method="symmetric",
        halving=HalvingConfig(candidates=6, sweep=3, rungs=1),
    )
    refused = "measured with quant_method 'hqq', the search quantises with 'symmetric'"
    with pytest.raises(ValueError, match=refused):
        pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY, sensitivity=hqq)


def test_a_profile_of_another_group_size_is_refused_by_the_search(
    trained_llama, pattern, pattern_search, tmp_path
) -> None:
    from qradaptor.sensitivity import profile_sensitivity

    at_16 = profile_sensitivity(trained_llama, pattern(4, 2), bits=[2, 3, 4, 8], group_size=16)
    config = replace(CONFIG, strategy="halving", halving=HalvingConfig(candidates=6, sweep=3, rungs=1))
    assert config.group_size != 16
    with pytest.raises(
        ValueError, match=f"measured at group size 16, the search quantises at {config.group_size}"
    ):
        pattern_search(trained_llama, sqlite_url(tmp_path / "s.db"), config, PROXY, sensitivity=at_16)
