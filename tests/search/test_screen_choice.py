"""The screen's final choice: its best plan only when it is clearly below the knapsack plan,
window by window; the window losses are the terms of the screen's own score."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest

from qradaptor.distributed.study import sqlite_url
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import parse_budget
from qradaptor.search.multifidelity import HalvingConfig
from qradaptor.search.pipeline import SearchConfig
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator
from qradaptor.search.records import TrialRecord
from qradaptor.search.screen_choice import Margin, paired_margin, settle_screen


def test_paired_margin_is_the_mean_difference_and_its_standard_error() -> None:
    candidate, reference = [1.0, 2.0, 3.5, 2.5], [1.5, 2.0, 4.0, 3.5]
    margin = paired_margin(candidate, reference)
    diffs = [-0.5, 0.0, -0.5, -1.0]
    assert margin.mean == pytest.approx(statistics.fmean(diffs))
    assert margin.stderr == pytest.approx(statistics.stdev(diffs) / 2)
    assert margin.windows == 4 and margin.errors == pytest.approx(-margin.mean / margin.stderr)


@pytest.mark.parametrize(
    ("margin", "errors"),
    [
        (Margin(-0.1, 0.0, 4), math.inf),  # every window agrees on the gap
        (Margin(0.1, 0.0, 4), 0.0),
        (Margin(0.0, 0.0, 4), 0.0),
        (Margin(-0.1, math.nan, 1), 0.0),  # one window says nothing about its spread
        (Margin(0.2, 0.1, 4), -2.0),
    ],
)
def test_errors_at_the_edges(margin, errors) -> None:
    assert margin.errors == errors


def test_paired_margin_needs_the_same_windows() -> None:
    with pytest.raises(ValueError, match="the same windows for both plans, got 2 and 3"):
        paired_margin([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        paired_margin([], [])


def _record(number: int, phase: str, plan_hash: str, loss: float) -> TrialRecord:
    return TrialRecord(number, phase, 0, plan_hash, (4,), (8,), loss, loss, 1, 4.0, 0.0)


KNAPSACK = _record(0, "knapsack", "k", 3.00)
NEAR = _record(1, "screen", "n", 2.99)
WINDOWS = {"k": [3.0, 3.2, 2.8, 3.0], "n": [2.96, 3.22, 2.79, 2.99]}  # lower on average, not on every window


def test_a_near_tie_keeps_the_knapsack_plan_and_says_why() -> None:
    chosen, note = settle_screen(NEAR, [KNAPSACK, NEAR], lambda r: WINDOWS[r.plan_hash], errors=2.0)
    assert chosen is KNAPSACK
    assert note.startswith("the screen's best plan (n) is 0.0100 ± 0.0122 nats below the knapsack plan (k)")
    assert note.endswith(
        "over 4 held-out windows, 0.8 standard errors, not over 2: keeping the knapsack plan"
    )


def test_a_clear_margin_or_no_margin_asked_keeps_the_best_plan() -> None:
    clear = {"k": [3.0, 3.2, 2.8, 3.0], "n": [2.9, 3.1, 2.71, 2.89]}
    chosen, note = settle_screen(NEAR, [KNAPSACK, NEAR], lambda r: clear[r.plan_hash], errors=2.0)
    assert chosen is NEAR and note.endswith("standard errors: chosen")
    asked = []
    chosen, note = settle_screen(NEAR, [KNAPSACK, NEAR], lambda r: asked.append(r) or WINDOWS[r.plan_hash], 0)
    assert (chosen, note, asked) == (NEAR, "", [])  # 0: the lowest mean wins, nothing scored again


def test_the_knapsack_plan_chosen_needs_no_windows() -> None:
    chosen, note = settle_screen(KNAPSACK, [KNAPSACK, NEAR], lambda r: pytest.fail("scored"), errors=2.0)
    assert (chosen, note) == (KNAPSACK, "")


def test_bad_screen_margin_is_refused() -> None:
    for bad in (-1.0, math.nan, True, "2"):
        with pytest.raises(ValueError, match="screen_margin must be a number of standard errors >= 0"):
            HalvingConfig(screen_margin=bad)


# --- on the tiny trained Llama -------------------------------------------------------------------

SCREEN = SearchConfig(  # test_multifidelity's search with the screen the top rung
    budget=parse_budget("3.6bits"),
    bits=(2, 3, 4, 8),
    ranks=(8,),  # one rank, as qra search --steps 0 holds it: plans differ in bits
    bayes=BayesConfig(iterations=0),
    group_size=64,  # where a neighbour of the knapsack plan screens lower on this model
    references=False,
    halving=HalvingConfig(candidates=12, sweep=4, rungs=0),
)
FORWARD = ProxyConfig(steps=0, batch_size=4, lr=1e-3, warmup=0, eval_batches=2)


def test_window_losses_average_to_the_forward_only_score(trained_llama, pattern) -> None:
    from qradaptor.plan import Plan

    evaluator = ProxyEvaluator(trained_llama, pattern(8, 1), pattern(8, 2), FORWARD)
    plan = Plan.uniform(3, 3, 4, group_size=32)
    windows = evaluator.window_losses(plan)
    assert len(windows) == 8
    assert statistics.fmean(windows) == pytest.approx(
        evaluator(plan).loss, rel=1e-5
    )  # fp32 sums in another order


def test_the_screen_search_keeps_the_knapsack_plan_unless_clearly_beaten(
    trained_llama, pattern_search, tmp_path
) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    lowest = pattern_search(
        trained_llama, storage, replace(SCREEN, halving=replace(SCREEN.halving, screen_margin=0)), FORWARD
    )
    knapsack = next(r for r in lowest.records if r.phase == "knapsack")
    assert lowest.chosen.loss < knapsack.loss and lowest.note == ""  # a neighbour screens lower here
    strict = pattern_search(
        trained_llama, storage, replace(SCREEN, halving=replace(SCREEN.halving, screen_margin=1e6)), FORWARD
    )
    assert strict.evaluated == 0 and strict.records == lowest.records  # the same scores, replayed
    assert strict.chosen == knapsack and strict.plan.plan_hash == knapsack.plan_hash
    assert f"the screen's best plan ({lowest.chosen.plan_hash}) is " in strict.note
    assert strict.note.endswith("not over 1e+06: keeping the knapsack plan")
    below = -float(strict.note.split(" is ")[1].split(" ± ")[0])
    assert below == pytest.approx(lowest.chosen.loss - knapsack.loss, abs=1e-4)
