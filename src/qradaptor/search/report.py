"""Plots and summary numbers of a finished search, built only from ``TrialRecord``s.

Nothing here needs Optuna or a model: a run directory's records are enough to redraw every
figure. Figures follow the paper: the Pareto view of loss against memory, the chosen plan by
depth (Fig. 3), the best-so-far loss over evaluations (Fig. 4), and how the chosen bits track
the block sensitivity (Eq. 6). Each plot is written atomically (temp file, then ``os.replace``);
the format follows the suffix of ``path``. Non-finite losses (diverged proxies) are drawn at
the top edge of the axes with a ``^`` marker rather than dropped silently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from qradaptor.plotting import pyplot, save_figure
from qradaptor.runfolder.search_run import Reference, SearchSummary
from qradaptor.search.records import PHASES, SEARCH_PHASES, TrialRecord, best_so_far

MIB = 2**20
PHASE_COLOURS = {
    "reference": "black",
    "initial": "tab:blue",
    "nsga2": "tab:orange",
    "knapsack": "tab:red",
    "screen": "tab:gray",
    "halving": "tab:purple",
    "bayes": "tab:green",
}
"""One colour per phase, shared by every plot."""


def _check_records(records: Sequence[TrialRecord]) -> dict[int, TrialRecord]:
    """Records by number; rejects an empty sequence, non-records and repeated numbers."""
    if len(records) == 0:
        raise ValueError("records must hold at least one TrialRecord, got an empty sequence")
    by_number: dict[int, TrialRecord] = {}
    for r in records:
        if not isinstance(r, TrialRecord):
            raise TypeError(f"records must hold TrialRecord objects, got {type(r).__name__}")
        if r.number in by_number:
            raise ValueError(f"records must have unique numbers, got {r.number} twice")
        by_number[r.number] = r
    return by_number


def _check_numbers(name: str, numbers: Sequence[int], by_number: dict[int, TrialRecord]) -> None:
    unknown = sorted(set(numbers) - set(by_number))
    if unknown:
        raise ValueError(f"{name} must name trial numbers present in records, got unknown {unknown}")


def _y_range(values: Sequence[float]) -> tuple[float, float]:
    """Limits that hold every finite value with a margin; (0, 1) when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    return lo - pad, hi + pad


def _label(r: TrialRecord) -> str:
    return r.name or f"#{r.number}"


def _finish(ax: Any, xlabel: str, ylabel: str, title: str, ylim: tuple[float, float] | None = None) -> None:
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point


def _scatter_losses(ax: Any, xs: Sequence[float], losses: Sequence[float], top: float, **style: Any) -> None:
    """Finite losses where they are; non-finite ones on the top edge, marked ``^``, unclipped."""
    finite = [(x, y) for x, y in zip(xs, losses, strict=True) if math.isfinite(y)]
    bad = [x for x, y in zip(xs, losses, strict=True) if not math.isfinite(y)]
    label = style.pop("label", None)
    if finite:
        ax.scatter(*zip(*finite, strict=True), label=label, **style)
    if bad:
        style.pop("marker", None)
        style.update(alpha=1.0, s=max(style.get("s", 20), 30))  # a diverged trial must stand out
        ax.scatter(bad, [top] * len(bad), marker="^", clip_on=False, **style)


def plot_pareto(
    records: Sequence[TrialRecord],
    path: str | os.PathLike[str],
    *,
    pareto: Sequence[int],
    budget_bytes: float | None = None,
) -> None:
    """Proxy loss against memory (MiB) for every trial, the Pareto front as a step line.

    Search trials are coloured by phase; references are black stars labelled with their name;
    the budget, when given, is a dashed vertical line.

    Args:
        records: Every trial of the study, references included.
        path: Where to write the figure.
        pareto: Numbers of the trials on the Pareto front (loss, bytes).
        budget_bytes: The memory budget in bytes, or None to draw none.

    Raises:
        ValueError: Empty or repeated records, a number in ``pareto`` not among the records,
            or a budget that is not finite and positive.
    """
    by_number = _check_records(records)
    _check_numbers("pareto", pareto, by_number)
    if budget_bytes is not None and not (math.isfinite(budget_bytes) and budget_bytes > 0):
        raise ValueError(f"budget_bytes must be finite and > 0, got {budget_bytes}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    lo, top = _y_range([r.loss for r in records])
    for phase in PHASES:
        group = [r for r in records if r.phase == phase]
        if not group:
            continue
        xs, ys = [r.bytes / MIB for r in group], [r.loss for r in group]
        if phase == "reference":
            _scatter_losses(ax, xs, ys, top, marker="*", s=160, color="black", zorder=4, label="reference")
            for r in group:
                y = r.loss if math.isfinite(r.loss) else top
                ax.annotate(_label(r), (r.bytes / MIB, y), xytext=(5, 5), textcoords="offset points")
        else:
            _scatter_losses(ax, xs, ys, top, s=18, alpha=0.7, color=PHASE_COLOURS[phase], label=phase)
    front = [
        r for r in sorted((by_number[n] for n in set(pareto)), key=lambda r: r.bytes) if math.isfinite(r.loss)
    ]
    if front:
        fx, fy = [r.bytes / MIB for r in front], [r.loss for r in front]
        ax.step(fx, fy, where="post", color="tab:red", zorder=3, label="Pareto front")
        ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="tab:red", zorder=3)
    if budget_bytes is not None:
        mib = budget_bytes / MIB
        ax.axvline(mib, color="grey", linestyle="--", label=f"budget {mib:.1f} MiB")
    if any(not math.isfinite(r.loss) for r in records):
        ax.scatter([], [], marker="^", color="grey", label="non-finite loss (top edge)")
    _finish(ax, "model memory (MiB)", "proxy loss", "Search trials: proxy loss vs memory", (lo, top))
    save_figure(fig, path)


def plot_plan_by_depth(
    bits: Sequence[int],
    ranks: Sequence[int],
    path: str | os.PathLike[str],
    *,
    unit_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Bits (top) and LoRA rank (bottom) per search unit over depth, as in the paper's Fig. 3.

    Args:
        bits: Bits per unit, in unit (depth) order.
        ranks: LoRA rank per unit.
        path: Where to write the figure.
        unit_names: Tick labels, one per unit; the unit index when None.
        title: Figure title; "Plan by depth" when empty.

    Raises:
        ValueError: Empty ``bits``, or ``ranks`` / ``unit_names`` of another length than ``bits``.
    """
    if len(bits) == 0:
        raise ValueError("bits must hold at least one unit, got an empty sequence")
    if len(ranks) != len(bits):
        raise ValueError(f"ranks must have len(bits)={len(bits)} entries, got {len(ranks)}")
    if unit_names is not None and len(unit_names) != len(bits):
        raise ValueError(f"unit_names must have len(bits)={len(bits)} entries, got {len(unit_names)}")
    plt = pyplot()
    units = list(range(len(bits)))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(max(6.0, 0.3 * len(bits)), 5))
    top.bar(units, list(bits), color="tab:blue")
    top.set_ylabel("bits")
    top.set_yticks(sorted(set(bits)))
    bottom.bar(units, list(ranks), color="tab:orange")
    bottom.set_ylabel("LoRA rank")
    bottom.set_xlabel("unit (depth)")
    bottom.set_xticks(units)
    if unit_names is not None:
        bottom.set_xticklabels(list(unit_names), rotation=90, fontsize=7)
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    top.set_title(title or "Plan by depth")
    save_figure(fig, path)


def plot_progress(records: Sequence[TrialRecord], path: str | os.PathLike[str]) -> None:
    """Best-so-far proxy loss against the number of search evaluations, as in the paper's Fig. 4.

    References are not evaluations of the search: each is a horizontal line labelled with its
    name. Each search loss is a faint dot; best-so-far points are coloured by phase.

    Raises:
        ValueError: Empty or repeated records, or no record from a search phase.
    """
    _check_records(records)
    search = [r for r in records if r.phase in SEARCH_PHASES]
    if not search:
        raise ValueError(f"records must hold a trial of a phase in {SEARCH_PHASES}, got only references")
    best = best_so_far(records)
    steps = list(range(1, len(search) + 1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    refs = [r for r in records if r.phase == "reference"]
    lo, top = _y_range([r.loss for r in search] + [r.loss for r in refs])
    losses = [r.loss for r in search]
    _scatter_losses(ax, steps, losses, top, s=10, alpha=0.25, color="grey", label="trial loss")
    finite = [(s, b, r.phase) for s, b, r in zip(steps, best, search, strict=True) if math.isfinite(b)]
    if finite:
        ax.step([f[0] for f in finite], [f[1] for f in finite], where="post", color="black", alpha=0.6)
    for phase in SEARCH_PHASES:
        pts = [(s, b) for s, b, p in finite if p == phase]
        if pts:
            ax.scatter(
                *zip(*pts, strict=True), s=18, color=PHASE_COLOURS[phase], zorder=3, label=f"best ({phase})"
            )
    for r in refs:
        if math.isfinite(r.loss):
            ax.axhline(r.loss, color="black", linestyle=":", linewidth=1)
            ax.text(steps[-1], r.loss, _label(r), ha="right", va="bottom", fontsize=8)
    if any(not math.isfinite(v) for v in losses):
        ax.scatter([], [], marker="^", color="grey", label="non-finite loss (top edge)")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # evaluations are counts
    _finish(ax, "search evaluations", "proxy loss", "Search progress (best so far)", (lo, top))
    save_figure(fig, path)


def _check_pair(bits: Sequence[int], sensitivity: Sequence[float]) -> None:
    if len(bits) != len(sensitivity):
        raise ValueError(f"sensitivity must have len(bits)={len(bits)} entries, got {len(sensitivity)}")
    if len(bits) < 2:
        raise ValueError(f"bits must hold at least 2 units for a correlation, got {len(bits)}")
    bad = [s for s in sensitivity if not math.isfinite(s)]
    if bad:
        raise ValueError(f"sensitivity must be finite, got {bad[0]}")


def bits_sensitivity_correlation(bits: Sequence[int], sensitivity: Sequence[float]) -> float:
    """Pearson r between the chosen bits per unit and the sensitivity per unit (Eq. 6).

    A positive r means the search gave more bits to the more sensitive units.

    Returns:
        r in [-1, 1], or NaN when either sequence is constant (e.g. a uniform plan): r is
        undefined there, and NaN keeps that visible instead of pretending 0.

    Raises:
        ValueError: Lengths differ, fewer than 2 units, or a non-finite sensitivity.
    """
    _check_pair(bits, sensitivity)
    from qradaptor.correlation import pearson

    return pearson([float(b) for b in bits], [float(s) for s in sensitivity])


def plot_bits_vs_sensitivity(
    bits: Sequence[int], sensitivity: Sequence[float], path: str | os.PathLike[str]
) -> None:
    """Scatter of chosen bits (y) against sensitivity (x), each point labelled by unit; r in the title.

    The x axis is logarithmic when every sensitivity is positive and they span over 100x.

    Raises:
        ValueError: As ``bits_sensitivity_correlation``.
    """
    r = bits_sensitivity_correlation(bits, sensitivity)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(list(sensitivity), list(bits), color="tab:blue")
    for i, (s, b) in enumerate(zip(sensitivity, bits, strict=True)):
        ax.annotate(str(i), (s, b), xytext=(3, 3), textcoords="offset points", fontsize=7)
    if min(sensitivity) > 0 and max(sensitivity) > 100 * min(sensitivity):
        ax.set_xscale("log")
    ax.set_yticks(sorted(set(bits)))
    title = f"Pearson r = {r:.3f}" if math.isfinite(r) else "Pearson r undefined (constant input)"
    _finish(ax, "sensitivity (mean KL, Eq. 6)", "chosen bits", f"Bits vs sensitivity: {title}")
    save_figure(fig, path)


def _json_loss(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise(records: Sequence[TrialRecord], *, pareto: Sequence[int], chosen_number: int) -> SearchSummary:
    """The numbers of a finished search, as summary.json's record.

    Fills the record's trial fields: ``evaluations``, ``seconds`` and ``best_loss`` (each over
    ``PHASES``; a best loss is None when the phase has no finite loss), ``total_evaluations``,
    ``total_seconds``, ``pareto`` (sorted numbers), ``chosen`` and ``chosen_on_pareto``, and
    ``references`` (each with ``chosen_minus_reference``, the chosen loss minus the
    reference's: negative is better; None when not finite). The fields about the run (budget,
    cost, roles, ...) are left None for the writer to fill with ``dataclasses.replace``.

    Args:
        records: Every trial of the study, references included.
        pareto: Numbers of the trials on the Pareto front.
        chosen_number: Number of the trial the search picked.

    Raises:
        ValueError: Empty or repeated records, or ``pareto`` / ``chosen_number`` naming a trial
            not among the records.
    """
    by_number = _check_records(records)
    _check_numbers("pareto", pareto, by_number)
    _check_numbers("chosen_number", [chosen_number], by_number)
    chosen = by_number[chosen_number]
    best: dict[str, float | None] = {}
    for phase in PHASES:
        finite = [r.loss for r in records if r.phase == phase and math.isfinite(r.loss)]
        best[phase] = min(finite) if finite else None
    return SearchSummary(
        evaluations={p: sum(r.phase == p for r in records) for p in PHASES},
        seconds={p: sum(r.seconds for r in records if r.phase == p) for p in PHASES},
        best_loss=best,
        total_evaluations=len(records),
        total_seconds=sum(r.seconds for r in records),
        pareto=tuple(sorted(set(pareto))),
        chosen=chosen,
        chosen_on_pareto=chosen.number in set(pareto),
        references=tuple(
            Reference(r, _json_loss(chosen.loss - r.loss)) for r in records if r.phase == "reference"
        ),
    )


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_summary(summary: SearchSummary) -> str:
    """A small text table of a search's summary for the terminal."""
    lines = [f"{'phase':<10} {'evals':>6} {'seconds':>10} {'best loss':>10}"]
    for p in PHASES:
        evaluations = summary.evaluations.get(p, 0)
        if not evaluations:
            continue  # a phase of the other strategy, or one this search skipped
        best = _fmt(summary.best_loss.get(p))
        lines.append(f"{p:<10} {evaluations:>6} {summary.seconds[p]:>10.1f} {best:>10}")
    lines.append(f"{'total':<10} {summary.total_evaluations:>6} {summary.total_seconds:>10.1f}")
    c = summary.chosen
    where = f"{c.phase}, on the Pareto front" if summary.chosen_on_pareto else c.phase
    lines += [
        "",
        f"chosen #{c.number} ({where}): loss {_fmt(c.loss)}, {c.bytes / MIB:.2f} MiB, "
        f"{c.avg_bits:.3f} avg bits",
        f"  bits  {' '.join(map(str, c.bits))}",
        f"  ranks {' '.join(map(str, c.ranks))}",
    ]
    if summary.references:
        names = [_label(r.trial) for r in summary.references]
        width = max(len("reference"), *map(len, names))
        lines += ["", f"{'reference':<{width}} {'loss':>10} {'MiB':>9} {'chosen-ref':>11}"]
        for name, r in zip(names, summary.references, strict=True):
            delta = _fmt(r.chosen_minus_reference, "+.4f")
            lines.append(f"{name:<{width}} {_fmt(r.trial.loss):>10} {r.trial.bytes / MIB:>9.2f} {delta:>11}")
    return "\n".join(lines)
