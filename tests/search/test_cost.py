"""Tests for qradaptor.search.cost: the work a search announces, counted by hand."""

from __future__ import annotations

from dataclasses import replace

from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import parse_budget
from qradaptor.search.cost import describe, profile_work, search_work
from qradaptor.search.definition import SearchConfig
from qradaptor.search.multifidelity import HalvingConfig
from qradaptor.search.proxy import ProxyConfig

CONFIG = SearchConfig(
    budget=parse_budget("4bits"),
    halving=HalvingConfig(candidates=12, eta=3, rungs=2),
    bayes=BayesConfig(iterations=2, batch=1),
    references=False,
)
PROXY = ProxyConfig(steps=9, batch_size=2, eval_batches=3)


def test_the_halving_search_is_counted_rung_by_rung() -> None:
    work = search_work(CONFIG, PROXY, num_blocks=30, block_weights=1000, calibration_windows=4, profile=True)
    # profile: 4 windows x (1 reference + 30 blocks x 4 bit-widths); screen: 12 plans x 6 held-out
    # windows; rung 1: 4 plans x (9/3 steps x 2 windows x 3 + 6); rung 2: (2 + the knapsack plan) x
    # (9 x 2 x 3 + 6); Bayes: 2 picks of the full proxy.
    assert work.window_forwards == 4 * 121 + 12 * 6 + 4 * 24 + 3 * 60 + 2 * 60
    assert work.fitted_weights == 30 * 1000 * 4
    assert work.summary == (
        "profile 30 blocks x 4 bit-widths, 12 plans screened forward only, 4 proxy fine-tunes of 3 "
        "steps, 3 proxy fine-tunes of 9 steps, 2 Bayesian picks of 9 steps"
    )
    assert describe(work, per_window=0.5, per_weight=1e-4).startswith(
        f"this search: {work.summary}; about {-(-(work.window_forwards * 0.5 + 12.0) // 60):.0f} min"
    )


def test_the_paper_search_counts_its_population_and_references() -> None:
    paper = replace(CONFIG, strategy="paper", population=5, generations=3, offspring=2, references=True)
    work = search_work(paper, PROXY, num_blocks=30, block_weights=1000, calibration_windows=4, profile=False)
    assert work.window_forwards == (4 + 11 + 2) * 60  # references, 5 + 3 x 2 evolved, Bayes
    assert "4 uniform references, 11 proxy fine-tunes of 9 steps (NSGA-II)" in work.summary


def test_a_profile_alone_is_counted_and_announced_as_a_profile() -> None:
    work = profile_work(num_blocks=30, block_weights=1000, bits=[2, 3, 4, 8, 16], calibration_windows=8)
    assert work.window_forwards == 8 * (1 + 30 * 4)  # 16 bits is not profiled
    assert work.fitted_weights == 30 * 1000 * 4
    assert work.summary == "30 blocks x 4 bit-widths over 8 windows"
    assert describe(work, per_window=0.01, per_weight=0.0, what="profile").startswith(
        "this profile: 30 blocks x 4 bit-widths over 8 windows; about 1 min on this device"
    )
