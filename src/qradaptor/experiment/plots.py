"""An experiment's figures, from its summary and cells (no model): the paper's Figs. 1, 3, 4 and 5.

    metrics.png            avg acc, PPL wiki and MMLU (where measured) per label, std over seeds (Figs. 1, 5)
    efficiency.png         steady tokens/s and peak GPU memory per label (Table 4)
    allocation.png         mean bits and rank per block of each searched label's plans (Fig. 3)
    convergence.png        best-so-far proxy loss over evaluations, one line per search (Fig. 4)
    sensitivity_bits.png   block sensitivity (Eq. 6) against the bits the search chose

Every figure goes through ``plotting.save_figure`` (Agg backend, written atomically).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qradaptor import correlation
from qradaptor.experiment.cells import CellResult, SearchInfo
from qradaptor.experiment.summary import ExperimentSummary, LabelRow, Stat, trained_on_several


def searches_by_label(cells: Sequence[CellResult]) -> dict[str, list[tuple[SearchInfo, list[int]]]]:
    """Each label's distinct searches among its done cells, with the seeds of the cells that used each."""
    out: dict[str, dict[str, tuple[SearchInfo, list[int]]]] = {}
    for cell in cells:
        if cell.done and cell.search is not None:
            entry = out.setdefault(cell.label, {}).setdefault(cell.search.path, (cell.search, []))
            entry[1].append(cell.seed)
    return {label: list(found.values()) for label, found in out.items()}


def _name(label: str, seeds: Sequence[int]) -> str:
    return f"{label} seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r of two equal-length sequences; None with fewer than 2 points or a constant one."""
    if len(xs) != len(ys):
        raise ValueError(f"ys must have len(xs)={len(xs)} values, got {len(ys)}")
    r = correlation.pearson(xs, ys)
    return None if math.isnan(r) else r  # undefined for a constant input: say so rather than 0


def _bar_text(value: float) -> str:
    """3 significant digits, without exponents for thousands (tokens/s, MiB)."""
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _bars(
    ax: Any, rows: Sequence[LabelRow], key: str, scale: float, ylabel: str, groups: Sequence[str] = ()
) -> list[float]:
    """Bars of ``key``'s mean (times ``scale``) with std error bars, each labelled; returns the means.

    With ``groups`` (one name per row), each group's bars get their own colour and a legend entry.
    """
    stats = [r.stats.get(key, Stat(None, None, 0)) for r in rows]
    xs = list(range(len(rows)))
    means = [math.nan if s.mean is None else s.mean * scale for s in stats]
    errors = [0.0 if s.std is None else s.std * scale for s in stats]
    names = list(dict.fromkeys(groups))
    colors = [f"C{names.index(g) % 10}" for g in groups] if groups else "tab:blue"
    bars = ax.bar(xs, means, yerr=errors, capsize=4, color=colors, alpha=0.8)
    if groups:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=f"C{i % 10}", alpha=0.8, label=n) for i, n in enumerate(names)], fontsize=8
        )
    ax.bar_label(bars, labels=["" if math.isnan(m) else _bar_text(m) for m in means], fontsize=8)
    # An empty slot must not read as a zero: it says n/a at the axis' foot (bar_label would put
    # it at the bar's NaN top, where matplotlib draws nothing).
    for x, mean in zip(xs, means, strict=True):
        if math.isnan(mean):
            ax.annotate(
                _bar_text(mean), (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                textcoords="offset points", ha="center", fontsize=8,
            )  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xlim(-0.6, len(rows) - 0.4)  # every slot whole, measured or not (autoscale sees no NaN bar)
    ax.set_xticklabels([r.label for r in rows], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return [m for m in means if not math.isnan(m)]


METRIC_PANELS = (
    ("avg_acc", 100.0, "avg acc over 7 tasks (%)", "Zero-shot accuracy (higher is better)"),
    ("ppl_wiki/ppl", 1.0, "perplexity", "PPL wiki (lower is better)"),
    ("mmlu/acc", 100.0, "MMLU 5-shot acc (%)", "MMLU 5-shot, Fig. 1's metric (higher is better)"),
)
"""metrics.png: (stat key, scale, y label, title) per panel; a panel no label measured is left out."""
EFFICIENCY_PANELS = (
    ("tokens_per_s", 1.0, "steady tokens/s", "Fine-tune throughput (higher is better)"),
    ("peak_mib", 1.0, "peak MiB (torch.cuda.max_memory_allocated)", "Peak GPU memory (lower is better)"),
)
"""efficiency.png (Table 4): throughput and peak memory per label."""


def measured(rows: Sequence[LabelRow], key: str) -> bool:
    """Whether any label has a value of ``key``."""
    return any(r.stats.get(key, Stat(None, None, 0)).mean is not None for r in rows)


def plot_panels(
    rows: Sequence[LabelRow],
    panels: Sequence[tuple[str, float, str, str]],
    path: Path,
    by_device: bool = False,
) -> None:
    """One bar panel per (key, scale, y label, title) that some label measured, mean ± std over seeds.

    A perplexity axis is logarithmic when the perplexities span 10x or more (a 2-bit baseline
    next to lora16), so that the others stay readable. With ``by_device``, labels trained on
    different devices (LabelRow.trained_on) get different colours, as their tokens/s compare only
    within one device; one device for all keeps one colour.

    Raises:
        ValueError: ``rows`` is empty, or no label measured any of the panels' keys.
    """
    from qradaptor.plotting import pyplot, save_figure

    if not rows:
        raise ValueError("rows must hold at least one LabelRow, got none")
    shown = [panel for panel in panels if measured(rows, panel[0])]
    if not shown:
        raise ValueError(f"rows must measure one of {[p[0] for p in panels]}, got none of them")
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(shown), squeeze=False, figsize=(max(4.0, 0.7 * len(rows)) * len(shown), 4.5)
    )
    several = by_device and trained_on_several(rows)
    groups = [", ".join(r.trained_on) or "device not recorded" for r in rows] if several else ()
    for ax, (key, scale, ylabel, title) in zip(axes[0], shown, strict=True):
        values = _bars(ax, rows, key, scale, ylabel, groups)
        if key.startswith("ppl") and values and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_yscale("log")
        ax.set_title(title)
    save_figure(fig, path)


def plot_metrics(rows: Sequence[LabelRow], path: Path) -> None:
    """Avg zero-shot acc (%), PPL wiki and MMLU 5-shot per label, those measured (Figs. 1 and 5);
    see plot_panels."""
    plot_panels(rows, METRIC_PANELS, path)


def _mean_per_block(plans: Sequence[Sequence[float]]) -> list[float]:
    lengths = {len(p) for p in plans}
    if len(lengths) != 1:
        raise ValueError(f"a label's searched plans must have one block count, got {sorted(lengths)}")
    return [sum(values) / len(values) for values in zip(*plans, strict=True)]


def plot_allocation(cells: Sequence[CellResult], path: Path) -> None:
    """Mean bits (top) and LoRA rank (bottom) per block of each searched label's chosen plans (Fig. 3).

    Raises:
        ValueError: No done cell has a search, or a label's plans differ in block count.
    """
    from qradaptor.plotting import pyplot, save_figure

    searches = searches_by_label(cells)
    if not searches:
        raise ValueError("cells must include a done cell with a search, got none")
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5.5))
    for label, found in searches.items():
        bits = _mean_per_block([s.block_bits for s, _ in found])
        ranks = _mean_per_block([s.block_ranks for s, _ in found])
        blocks = list(range(len(bits)))
        name = f"{label} ({len(found)} search{'es' if len(found) > 1 else ''})"
        top.plot(blocks, bits, marker="o", drawstyle="steps-mid", label=name)
        bottom.plot(blocks, ranks, marker="o", drawstyle="steps-mid", label=name)
    top.set(ylabel="bits", title="Chosen allocation by depth (mean over searches)")
    bottom.set(ylabel="LoRA rank", xlabel="block")
    bottom.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def plot_convergence(cells: Sequence[CellResult], path: Path) -> None:
    """Best-so-far proxy loss against search evaluations, one line per search (Fig. 4).

    Non-finite best-so-far values (every proxy so far diverged) are left out of the line.

    Raises:
        ValueError: No done cell's search has trials.
    """
    from qradaptor.plotting import pyplot, save_figure

    lines = [
        (_name(label, seeds), search.best_so_far)
        for label, found in searches_by_label(cells).items()
        for search, seeds in found
        if search.best_so_far
    ]
    if not lines:
        raise ValueError("cells must include a done cell whose search has trials.csv, got none")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, best in lines:
        points = [(i, b) for i, b in enumerate(best, start=1) if math.isfinite(b)]
        if points:
            ax.step(*zip(*points, strict=True), where="post", label=name)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # evaluations are counts
    ax.set(xlabel="search evaluations", ylabel="best proxy loss so far", title="Search convergence")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def plot_sensitivity_bits(cells: Sequence[CellResult], path: Path) -> None:
    """Block sensitivity (KL at the lowest bit-width, Eq. 6) against the chosen bits, per search.

    The legend gives each search's Pearson r over its blocks (as plotted: at module
    granularity the bits are a block's mean, so r may differ from the search's own per-module r).

    Raises:
        ValueError: No done cell's search has a sensitivity profile, or one whose block count
            differs from its plan's.
    """
    from qradaptor.plotting import pyplot, save_figure

    points = [
        (_name(label, seeds), search.sensitivity, search.block_bits)
        for label, found in searches_by_label(cells).items()
        for search, seeds in found
        if search.sensitivity is not None
    ]
    if not points:
        raise ValueError("cells must include a done cell whose search has sensitivity.json, got none")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, sensitivity, bits in points:
        if len(sensitivity) != len(bits):
            raise ValueError(f"{name}: sensitivity has {len(sensitivity)} blocks, its plan {len(bits)}")
        r = pearson(sensitivity, bits)
        ax.scatter(sensitivity, bits, alpha=0.8, label=f"{name} (r = {'n/a' if r is None else f'{r:.2f}'})")
    every = [s for _, sensitivity, _ in points for s in sensitivity]
    if min(every) > 0 and max(every) > 100 * min(every):
        ax.set_xscale("log")
    ax.set(xlabel="sensitivity (mean KL at the lowest bits, Eq. 6)", ylabel="chosen bits")
    ax.set_title("Bits the search gave each block vs its sensitivity")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def plot_all(experiment_dir: Path, summary: ExperimentSummary, cells: Sequence[CellResult]) -> list[Path]:
    """Draws every figure that the cells have data for into ``experiment_dir``; returns their paths."""
    done = [c for c in cells if c.done]
    searched = [s for found in searches_by_label(done).values() for s, _ in found]

    def has(panels: Sequence[tuple[str, float, str, str]]) -> bool:
        return bool(done) and any(measured(summary.rows, key) for key, *_ in panels)

    wanted = [
        ("metrics.png", has(METRIC_PANELS), lambda p: plot_metrics(summary.rows, p)),
        (
            "efficiency.png",
            has(EFFICIENCY_PANELS),
            lambda p: plot_panels(summary.rows, EFFICIENCY_PANELS, p, by_device=True),
        ),
        ("allocation.png", bool(searched), lambda p: plot_allocation(done, p)),
        ("convergence.png", any(s.best_so_far for s in searched), lambda p: plot_convergence(done, p)),
        (
            "sensitivity_bits.png",
            any(s.sensitivity is not None for s in searched),
            lambda p: plot_sensitivity_bits(done, p),
        ),
    ]
    paths = []
    for name, has_data, draw in wanted:
        if has_data:
            draw(Path(experiment_dir) / name)
            paths.append(Path(experiment_dir) / name)
    return paths
