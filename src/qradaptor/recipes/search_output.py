"""Writes the run folder of ``qra search`` (its layout and records are ``runfolder/search_run.py``'s):
results, plots and the printed summary."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.recipes.inputs import write_text_atomic
from qradaptor.runfolder import search_run as layout
from qradaptor.runfolder.search_run import SearchSettings, SearchSummary

if TYPE_CHECKING:
    from qradaptor.search.pipeline import SearchOutcome


def write_config(run_dir: Path, settings: dict[str, Any]) -> None:
    """Writes config.json: ``settings`` and the command line, every URL's password hidden."""
    from qradaptor.redact import redact

    SearchSettings(settings, redact(" ".join(sys.argv))).save(run_dir)


def write_run(
    run_dir: Path,
    outcome: SearchOutcome,
    config: Any,
    epoch_tokens: int,
    seconds: float,
    roles: dict[str, str] | None = None,
    chance: float = math.inf,
) -> SearchSummary:
    """Writes the run folder's results (each file atomically) and returns the summary.

    ``roles`` says which text calibrated, which selected and what is reported as test.
    ``chance`` is ln(vocab): plans scored at or above it count as collapsed.
    """
    from qradaptor.search import report
    from qradaptor.search.records import records_to_csv

    records = list(outcome.records)
    summary = report.summarise(records, pareto=outcome.pareto, chosen_number=outcome.chosen.number)
    # Every rung's fine-tune tokens count: the screen's forward passes train on nothing.
    proxy_tokens = sum(r.tokens for r in (*records, *outcome.screened) if r.phase != "reference")
    summary = replace(
        summary,
        budget=config.budget.describe(),
        note=outcome.note,
        strategy=config.strategy,
        screened=_rung_counts(outcome),
        evaluated_this_run=outcome.evaluated,
        replayed_from_study=outcome.replayed,
        stage_seconds={k: round(v, 3) for k, v in outcome.stage_seconds.items()},
        wall_seconds=round(seconds, 3),
        proxy_tokens=proxy_tokens,
        epoch_tokens=epoch_tokens,
        search_cost_epochs=proxy_tokens / epoch_tokens if epoch_tokens else None,
        data_roles=roles,
        chance_loss=chance if math.isfinite(chance) else None,
        collapsed_plans=sum(math.isfinite(r.loss) and r.loss >= chance for r in records),
        chosen_collapsed=outcome.chosen.loss >= chance,
    )
    if outcome.unit_sensitivity is not None:
        pearson = report.bits_sensitivity_correlation(outcome.chosen.bits, outcome.unit_sensitivity)
        summary = replace(summary, profiled=True, bits_sensitivity_pearson=pearson)
    write = lambda name, text: write_text_atomic(run_dir / name, text, force=True)  # noqa: E731
    write(layout.SEARCH_PLAN, outcome.plan.to_json() + "\n")
    write(layout.SEARCH_TRIALS_CSV, records_to_csv(records))
    write(layout.SEARCH_TRIALS_JSONL, "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    if outcome.screened:  # the halving strategy's lower rungs (generation = rung)
        write(layout.SEARCH_SCREENED, records_to_csv(outcome.screened))
    by_number = {r.number: r for r in records}
    pareto = [by_number[n].to_dict() for n in outcome.pareto]
    write(layout.SEARCH_PARETO, json.dumps(pareto, indent=2) + "\n")
    if outcome.sensitivity is not None:
        write(layout.SEARCH_SENSITIVITY, json.dumps(outcome.sensitivity.to_dict(), indent=2) + "\n")
        write(layout.SEARCH_SENSITIVITY_CSV, outcome.sensitivity.to_csv())
    summary.save(run_dir)  # summary.json, the last result: qra experiment's mark of a finished search
    _plots(run_dir, outcome, config)
    return summary


def _rung_counts(outcome: SearchOutcome) -> dict[str, int]:
    """Plans scored on each lower rung of the halving strategy, e.g. {"rung0": 24, "rung1": 9}."""
    counts: dict[str, int] = {}
    for record in outcome.screened:
        key = f"rung{record.generation}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _plots(run_dir: Path, outcome: SearchOutcome, config: Any) -> None:
    from qradaptor.plotting import can_plot

    if not can_plot():
        print("matplotlib is not installed: no plots (pip install 'qradaptor[plot]')", file=sys.stderr)
        return
    from qradaptor.search import report
    from qradaptor.search.records import SEARCH_PHASES
    from qradaptor.sensitivity_table import plot_sensitivity

    records = list(outcome.records)
    budget_bytes = config.budget.value if config.budget.kind == "bytes" else None
    report.plot_pareto(records, run_dir / "pareto.png", pareto=outcome.pareto, budget_bytes=budget_bytes)
    report.plot_plan_by_depth(
        outcome.chosen.bits,
        outcome.chosen.ranks,
        run_dir / "plan_by_depth.png",
        unit_names=outcome.space.unit_names,
        title=f"chosen plan, {config.budget.describe()}",
    )
    if any(r.phase in SEARCH_PHASES for r in records):  # not when the budget let nothing be searched
        report.plot_progress(records, run_dir / "progress.png")
    if outcome.unit_sensitivity is not None:
        report.plot_bits_vs_sensitivity(
            outcome.chosen.bits, outcome.unit_sensitivity, run_dir / "bits_vs_sensitivity.png"
        )
    if outcome.sensitivity is not None:
        plot_sensitivity(outcome.sensitivity, run_dir / "sensitivity.png")


def print_outcome(outcome: SearchOutcome, summary: SearchSummary, run_dir: Path) -> None:
    from qradaptor.search import report

    if outcome.note:
        print(outcome.note)
    print(report.format_summary(summary))
    chosen = outcome.chosen
    print(
        f"chosen plan: proxy loss {chosen.loss:.4f}, {chosen.avg_bits:.3f} avg bits, {chosen.bytes} bytes; "
        f"bits {' '.join(map(str, chosen.bits))}; ranks {' '.join(map(str, chosen.ranks))}"
    )
    knapsack = next((r for r in outcome.records if r.phase == "knapsack"), None)
    if knapsack is not None and knapsack.plan_hash == chosen.plan_hash:
        # A note beside the knapsack plan chosen is the screen's comparison (screen_choice).
        why = "no other plan was clearly lower (above)" if outcome.note else "no plan scored lower"
        print(f"the chosen plan is the knapsack plan (qra plan --baseline knapsack): {why}")
    elif knapsack is not None and math.isfinite(knapsack.loss):
        gain = (knapsack.loss - chosen.loss) / knapsack.loss
        print(
            f"the knapsack plan scored {knapsack.loss:.4f}: "
            f"the chosen plan ({chosen.phase}) is {gain:.2%} lower"
        )
    if summary.chosen_collapsed:
        print(
            f"warning: the chosen plan's proxy loss {chosen.loss:.4f} is at or above ln(vocab) = "
            f"{summary.chance_loss:.4f}, a uniform guess: every plan within the budget collapsed; "
            "give a larger --budget or higher --bits choices",
            file=sys.stderr,
        )
    screened = f" ({len(outcome.screened)} on lower rungs)" if outcome.screened else ""
    print(
        f"{outcome.evaluated} plans scored, {outcome.replayed} read from the study{screened}; "
        f"search cost {summary.search_cost_epochs:.3f} epochs of the training data"
    )
    print(f"run folder: {run_dir}  (qra eval --plan {run_dir / layout.SEARCH_PLAN})")
