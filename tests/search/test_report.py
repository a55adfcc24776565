"""Plots and summary of a finished search, from hand-built records (no model, no Optuna)."""

from __future__ import annotations

import json
import math

import pytest

from qradaptor.search.records import TrialRecord
from qradaptor.search.report import (
    bits_sensitivity_correlation,
    format_summary,
    plot_bits_vs_sensitivity,
    plot_pareto,
    plot_plan_by_depth,
    plot_progress,
    summarise,
)

PNG = b"\x89PNG\r\n\x1a\n"
MIB = 2**20


def rec(number: int, phase: str, loss: float, mib: float, seconds: float, name: str = "") -> TrialRecord:
    bits = (4, 3, 2) if phase != "reference" else (4, 4, 4)
    return TrialRecord(
        number=number,
        phase=phase,
        generation=0,
        plan_hash=f"h{number}",
        bits=bits,
        ranks=(8, 16, 8),
        loss=loss,
        loss_before=loss + 1.0,
        bytes=int(mib * MIB),
        avg_bits=sum(bits) / len(bits),
        seconds=seconds,
        name=name,
    )


@pytest.fixture
def records() -> list[TrialRecord]:
    return [
        rec(0, "reference", 2.50, 10.0, 5.0, name="uniform-4bit-r8"),
        rec(1, "reference", 2.80, 6.0, 4.0, name="uniform-2bit-r8"),
        rec(2, "initial", 2.70, 7.0, 3.0),
        rec(3, "initial", math.inf, 8.0, 2.5),  # diverged proxy
        rec(4, "initial", 2.60, 9.0, 3.5),
        rec(5, "nsga2", 2.55, 8.0, 2.0),
        rec(6, "nsga2", 2.65, 6.5, 2.0),
        rec(7, "bayes", 2.40, 8.5, 6.0),
    ]


def assert_only_png(tmp_path, name: str) -> None:
    target = tmp_path / name
    assert target.read_bytes()[:8] == PNG
    assert target.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_plot_pareto_writes_png(records, tmp_path) -> None:
    plot_pareto(records, tmp_path / "pareto.png", pareto=[6, 5, 7], budget_bytes=9.0 * MIB)
    assert_only_png(tmp_path, "pareto.png")


def test_plot_pareto_all_losses_non_finite(tmp_path) -> None:
    records = [rec(0, "initial", math.inf, 5.0, 1.0), rec(1, "nsga2", math.nan, 6.0, 1.0)]
    plot_pareto(records, tmp_path / "p.png", pareto=[0])
    assert_only_png(tmp_path, "p.png")


def test_plot_plan_by_depth_writes_png(tmp_path) -> None:
    plot_plan_by_depth([4, 3, 2, 8], [8, 16, 4, 2], tmp_path / "plan.png", unit_names=list("abcd"), title="t")
    assert_only_png(tmp_path, "plan.png")


def test_plot_progress_writes_png(records, tmp_path) -> None:
    plot_progress(records, tmp_path / "progress.png")
    assert_only_png(tmp_path, "progress.png")


def test_plot_progress_first_trial_diverged(tmp_path) -> None:
    records = [rec(0, "initial", math.inf, 5.0, 1.0), rec(1, "nsga2", 3.0, 6.0, 1.0)]
    plot_progress(records, tmp_path / "p.png")
    assert_only_png(tmp_path, "p.png")


def test_plot_bits_vs_sensitivity_writes_png(tmp_path) -> None:
    plot_bits_vs_sensitivity([2, 3, 4, 8], [0.001, 0.01, 0.1, 5.0], tmp_path / "bs.png")
    assert_only_png(tmp_path, "bs.png")


def test_plot_bits_vs_sensitivity_constant_bits(tmp_path) -> None:
    plot_bits_vs_sensitivity([4, 4, 4], [0.1, 0.2, 0.3], tmp_path / "bs.png")
    assert_only_png(tmp_path, "bs.png")


def test_plot_format_follows_suffix(tmp_path) -> None:
    plot_plan_by_depth([4, 3], [8, 16], tmp_path / "plan.pdf")
    assert (tmp_path / "plan.pdf").read_bytes()[:5] == b"%PDF-"


def test_correlation_hand_computed() -> None:
    assert bits_sensitivity_correlation([2, 3, 4], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert bits_sensitivity_correlation([4, 3, 2], [0.1, 0.2, 0.3]) == pytest.approx(-1.0)
    assert math.isnan(bits_sensitivity_correlation([4, 4, 4], [0.1, 0.2, 0.3]))
    assert math.isnan(bits_sensitivity_correlation([2, 3, 4], [0.5, 0.5, 0.5]))
    # x = (2, 4, 4, 8), y = (1, 3, 2, 6): mean 4.5 and 3; sxy = 16, sxx = 19, syy = 14
    expected = 16 / math.sqrt(19 * 14)  # 0.98102
    assert bits_sensitivity_correlation([2, 4, 4, 8], [1.0, 3.0, 2.0, 6.0]) == pytest.approx(expected)


def test_summarise_hand_computed(records) -> None:
    summary = summarise(records, pareto=[7, 5, 6], chosen_number=7)
    halving = ("knapsack", "screen", "halving")  # the other strategy's phases: counted, none here
    assert summary.evaluations == {
        "reference": 2,
        "initial": 3,
        "nsga2": 2,
        "bayes": 1,
        **dict.fromkeys(halving, 0),
    }
    assert summary.seconds == pytest.approx(
        {"reference": 9.0, "initial": 9.0, "nsga2": 4.0, "bayes": 6.0, **dict.fromkeys(halving, 0.0)}
    )
    best = dict(summary.best_loss)
    assert all(best.pop(p) is None for p in halving)
    assert summary.total_seconds == pytest.approx(28.0)
    assert summary.total_evaluations == 8
    assert best == pytest.approx({"reference": 2.5, "initial": 2.6, "nsga2": 2.55, "bayes": 2.4})
    assert summary.pareto == (5, 6, 7)
    chosen = summary.chosen
    assert (chosen.number, chosen.loss, chosen.bytes) == (7, 2.40, int(8.5 * MIB))
    assert (chosen.bits, chosen.ranks, chosen.avg_bits) == ((4, 3, 2), (8, 16, 8), 3.0)
    assert summary.chosen_on_pareto is True
    refs = {r.trial.name: r for r in summary.references}
    assert refs["uniform-4bit-r8"].trial.loss == pytest.approx(2.5)
    assert refs["uniform-4bit-r8"].chosen_minus_reference == pytest.approx(-0.1)
    assert refs["uniform-2bit-r8"].chosen_minus_reference == pytest.approx(-0.4)
    assert summary.budget is None and summary.profiled is False  # the run's fields: the writer's
    json.dumps(summary.to_dict(), allow_nan=False)  # JSON-able, no inf or nan


def test_summarise_non_finite_chosen_is_none(records) -> None:
    summary = summarise(records, pareto=[], chosen_number=3)
    data = summary.to_dict()
    assert data["chosen"]["loss"] is None
    assert data["chosen"]["on_pareto"] is False
    assert all(r["chosen_minus_reference"] is None for r in data["references"])
    json.dumps(data, allow_nan=False)
    assert "chosen #3 (initial): loss -" in format_summary(summary)


def test_format_summary_table(records) -> None:
    text = format_summary(summarise(records, pareto=[5, 6, 7], chosen_number=7))
    lines = text.splitlines()
    assert lines[0].split() == ["phase", "evals", "seconds", "best", "loss"]
    assert lines[1].split() == ["reference", "2", "9.0", "2.5000"]
    assert lines[4].split() == ["bayes", "1", "6.0", "2.4000"]
    assert lines[5].split() == ["total", "8", "28.0"]
    assert "chosen #7 (bayes, on the Pareto front): loss 2.4000, 8.50 MiB, 3.000 avg bits" in text
    assert "  bits  4 3 2" in text
    assert any(line.split() == ["uniform-2bit-r8", "2.8000", "6.00", "-0.4000"] for line in lines)


def test_empty_records_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="records must hold at least one TrialRecord"):
        plot_pareto([], tmp_path / "p.png", pareto=[])
    with pytest.raises(ValueError, match="records must hold at least one TrialRecord"):
        plot_progress([], tmp_path / "p.png")
    with pytest.raises(ValueError, match="records must hold at least one TrialRecord"):
        summarise([], pareto=[], chosen_number=0)
    assert list(tmp_path.iterdir()) == []


def test_progress_needs_a_search_trial(records, tmp_path) -> None:
    with pytest.raises(ValueError, match="got only references"):
        plot_progress(records[:2], tmp_path / "p.png")


def test_unknown_numbers_rejected(records, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"pareto must name trial numbers.*\[42\]"):
        plot_pareto(records, tmp_path / "p.png", pareto=[5, 42])
    with pytest.raises(ValueError, match=r"pareto must name trial numbers.*\[99\]"):
        summarise(records, pareto=[99], chosen_number=7)
    with pytest.raises(ValueError, match=r"chosen_number must name trial numbers.*\[12\]"):
        summarise(records, pareto=[7], chosen_number=12)


def test_repeated_numbers_rejected(records) -> None:
    with pytest.raises(ValueError, match="unique numbers, got 7 twice"):
        summarise(records + [records[-1]], pareto=[], chosen_number=7)


def test_bad_budget_rejected(records, tmp_path) -> None:
    with pytest.raises(ValueError, match="budget_bytes must be finite and > 0, got -1"):
        plot_pareto(records, tmp_path / "p.png", pareto=[7], budget_bytes=-1.0)


def test_mismatched_lengths_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"ranks must have len\(bits\)=3 entries, got 2"):
        plot_plan_by_depth([4, 3, 2], [8, 8], tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"unit_names must have len\(bits\)=2 entries, got 1"):
        plot_plan_by_depth([4, 3], [8, 8], tmp_path / "p.png", unit_names=["a"])
    with pytest.raises(ValueError, match="bits must hold at least one unit"):
        plot_plan_by_depth([], [], tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"sensitivity must have len\(bits\)=3 entries, got 2"):
        bits_sensitivity_correlation([4, 3, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2 units"):
        plot_bits_vs_sensitivity([4], [0.1], tmp_path / "p.png")
    with pytest.raises(ValueError, match="sensitivity must be finite, got nan"):
        bits_sensitivity_correlation([4, 3], [0.1, math.nan])
    assert list(tmp_path.iterdir()) == []
