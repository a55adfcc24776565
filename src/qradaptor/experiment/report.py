"""An experiment's tables and plots: per label, means and stds over seeds of what its cells measured.

Nothing here runs a model or imports torch: ``cells.collect`` reads the folders, this module
summarises them. A cell that is not done (failed, pending, or no eval.json) is counted
(n done of n planned) and listed, never averaged. Per label, every number is the mean and
sample standard deviation over its done seeds (as the paper's Table 1 reports them); search
numbers are averaged over the label's distinct searches, since seeds may share one.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from qradaptor.eval.suite import ZERO_SHOT
from qradaptor.experiment.cells import ACC_KEYS, NORM_KEYS, CellResult, SearchInfo, collect
from qradaptor.experiment.summary import ExperimentSummary, LabelRow, Stat, trained_on_several

__all__ = [
    "CellResult",
    "ExperimentSummary",
    "LabelRow",
    "Stat",
    "collect",
    "summarise",
    "to_json",
    "to_markdown",
    "write_report",
]

PPL_KEYS = ("ppl_wiki/ppl", "ppl_lambada/ppl")
MMLU_KEY = "mmlu/acc"
"""MMLU 5-shot accuracy, where an experiment evaluates it (the pilot study)."""
MISSING = "–"
"""A table entry with nothing measured."""


def _stat(values: Sequence[float | None]) -> Stat:
    present = [v for v in values if v is not None]
    mean = statistics.fmean(present) if present else None
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stat(mean, std, len(present))


def _cell_values(cell: CellResult) -> dict[str, float | None]:
    return {
        "avg_bits": cell.avg_bits,
        "avg_rank": cell.avg_rank,
        **cell.metrics,
        "avg_acc": cell.avg_acc,
        "avg_acc_norm": cell.avg_acc_norm,
        "tokens_per_s": cell.tokens_per_s,
        "peak_mib": cell.peak_mib,
        "predicted_peak_mib": cell.predicted_peak_mib,
        "train_seconds": cell.train_seconds,
        # The search's cost against the fine-tune it chose a plan for (the paper's "epochs").
        "search_per_finetune": _ratio(cell.search.proxy_tokens if cell.search else None, cell.train_tokens),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _search_values(search: SearchInfo) -> dict[str, float | None]:
    half = len(search.block_bits) // 2
    return {
        "search_evaluations": float(search.evaluations),
        "search_seconds": search.seconds,
        "search_epochs": search.cost_epochs,
        "search_pearson": search.pearson,
        "search_avg_bits": search.chosen_avg_bits,
        "search_loss": search.chosen_loss,
        # The paper's Fig. 3 says later blocks get more bits: the chosen plan's two halves by depth.
        "search_bits_early": statistics.fmean(search.block_bits[:half]) if half else None,
        "search_bits_late": statistics.fmean(search.block_bits[half:]) if half else None,
        "search_gain": _gain_after_initial(search),
    }


def _gain_after_initial(search: SearchInfo) -> float | None:
    """How far the evolution and Bayes stages lowered the best proxy loss below the initial
    population's best (Fig. 4's descent); None without trials.csv or with no stage after it."""
    curve, initial = search.best_so_far, search.initial_evaluations
    if not 0 < initial < len(curve):
        return None
    return curve[initial - 1] - curve[-1]


def _row(label: str, cells: Sequence[CellResult]) -> LabelRow:
    done = [c for c in cells if c.done]
    per_cell = [_cell_values(c) for c in done]
    searches = list({c.search.path: c.search for c in done if c.search is not None}.values())
    per_search = [_search_values(s) for s in searches]
    stats: dict[str, Stat] = {}
    for group in (per_cell, per_search):
        keys = list(dict.fromkeys(k for values in group for k in values))
        stats.update({k: _stat([values.get(k) for values in group]) for k in keys})
    first = cells[0]
    devices = tuple(sorted({s.device for s in searches if s.device}))
    trained_on = tuple(sorted({c.trained_on for c in done if c.trained_on}))
    return LabelRow(
        label,
        first.method,
        first.budget,
        len(done),
        len(cells),
        stats,
        None,
        len(searches),
        devices,
        trained_on,
    )


def summarise(cells: Sequence[CellResult], reference: str | None = "lora16") -> ExperimentSummary:
    """One row per label (in the order the cells come), means and stds over its done seeds.

    Args:
        cells: From ``collect``.
        reference: The label whose mean tokens/s the others are divided by; None, or a label
            without done cells, gives no ratio. Only labels trained on the reference's one device
            get a ratio: an H100's tokens/s over an H200's measures the cards, not the methods.

    Returns:
        The summary; ``reference`` is kept only if it is one of the labels.

    Raises:
        ValueError: ``cells`` is empty or mixes experiments.
    """
    if not cells:
        raise ValueError("cells must hold at least one CellResult, got none")
    experiments = sorted({c.experiment for c in cells})
    if len(experiments) > 1:
        raise ValueError(f"cells must come from one experiment, got {experiments}")
    by_label: dict[str, list[CellResult]] = {}
    for cell in cells:
        by_label.setdefault(cell.label, []).append(cell)
    rows = [_row(label, group) for label, group in by_label.items()]
    if reference not in by_label:
        reference = None
    ref_row = next((r for r in rows if r.label == reference and r.n_done), None)
    base = ref_row.stats["tokens_per_s"].mean if ref_row is not None else None
    if ref_row is not None and base and len(ref_row.trained_on) <= 1:
        rows = [_with_ratio(r, base) if r.trained_on == ref_row.trained_on else r for r in rows]
    return ExperimentSummary(experiments[0], reference, tuple(rows), tuple(cells))


def _with_ratio(row: LabelRow, base: float) -> LabelRow:
    mean = row.stats["tokens_per_s"].mean if "tokens_per_s" in row.stats else None
    return replace(row, tokens_per_s_ratio=None if mean is None else mean / base)


def _fmt(stat: Stat | None, digits: int, scale: float = 1.0) -> str:
    """ "mean ± std", or the mean alone with one value; "–" with none."""
    if stat is None or stat.mean is None:
        return MISSING
    text = f"{stat.mean * scale:,.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std * scale:,.{digits}f}"


EFFICIENCY_COLUMNS = (
    ("avg bits", "avg_bits", 2),
    ("peak MiB", "peak_mib", 1),
    ("tokens/s", "tokens_per_s", 0),
)
"""Efficiency table columns before the tokens/s ratio: (title, stat key, decimals)."""
SEARCH_COST_COLUMNS = (
    ("search evals", "search_evaluations", 0),
    ("search s", "search_seconds", 1),
    ("search epochs (proxy data)", "search_epochs", 3),
    ("search tokens / fine-tune tokens", "search_per_finetune", 2),
)
"""Efficiency table columns after the ratio."""
SEARCH_COLUMNS = (
    ("chosen avg bits", "search_avg_bits", 2),
    ("chosen proxy loss", "search_loss", 4),
    ("gain after initial population (nats)", "search_gain", 3),
    ("bits, first half of blocks", "search_bits_early", 2),
    ("bits, second half", "search_bits_late", 2),
    ("Pearson r (sensitivity, bits)", "search_pearson", 2),
)
"""Search table columns after the search count."""


def _titles(columns: Sequence[tuple[str, str, int]]) -> list[str]:
    return [title for title, _, _ in columns]


def _formatted(row: LabelRow, columns: Sequence[tuple[str, str, int]]) -> list[str]:
    """The row's "mean ± std" of each column's stat key, to the column's decimals."""
    return [_fmt(row.stats.get(key), digits) for _, key, digits in columns]


def _table(header: Sequence[str], lines: Sequence[Sequence[str]], keep: int = 1) -> list[str]:
    """A markdown table without the columns (after the first ``keep``) that no line measured:
    an experiment that evaluates perplexity alone gets no empty accuracy columns."""
    columns = [i for i in range(len(header)) if i < keep or any(line[i] != MISSING for line in lines)]
    header = [header[i] for i in columns]
    lines = [[line[i] for i in columns] for line in lines]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def to_markdown(summary: ExperimentSummary) -> str:
    """The quality, acc_norm, efficiency and (if any label searched) search tables, and the cells not done.

    Accuracies are in percent; every number is "mean ± std" over done seeds, "–" where missing.
    A column no label measured is left out, and so is the acc_norm table when nothing in it was.
    """
    rows = summary.rows
    n_done, n_planned = sum(r.n_done for r in rows), sum(r.n_planned for r in rows)
    out = [f"# {summary.experiment}", "", f"{n_done} of {n_planned} cells done.", ""]
    measured = sorted({c.measured_on for c in summary.cells if c.done and c.measured_on})
    if measured:
        out += ["Measured on (train.json): " + "; ".join(measured) + ".", ""]
    roles = sorted({c.search.data_roles for c in summary.cells if c.search and c.search.data_roles})
    for pairs in roles:  # which text chose the plans, and which scores them (data/roles.py)
        out += ["Searches' data: " + "; ".join(f"{role}: {source}" for role, source in pairs) + ".", ""]
    weights = sorted({c.weights for c in summary.cells if c.done and c.weights})
    if weights:  # what the "16-bit" base really is (a GGUF's is its tensors dequantised)
        out += ["Model weights (train.json provenance):", "", *(f"- {w}" for w in weights), ""]
    tasks = list(ZERO_SHOT)
    reused = [c for c in summary.cells if c.done and c.reused_from]

    def quality(r: LabelRow, keys: Sequence[str], avg: str) -> list[str]:
        accs = [_fmt(r.stats.get(k), 1, 100) for k in keys]
        n_reused = sum(c.label == r.label for c in reused)
        seeds = f"{r.n_done}/{r.n_planned}" + (f" ({n_reused} reused)" if n_reused else "")
        return [r.label, seeds, *accs, _fmt(r.stats.get(avg), 1, 100)]

    header = ["method", "seeds", "avg bits", "avg rank", "PPL wiki", "PPL LAMBADA", *tasks, "avg acc"]
    header.append("MMLU 5-shot")  # the paper's pilot metric (Fig. 1); dropped where not measured
    lines = []
    for r in rows:
        s = r.stats.get
        line = quality(r, ACC_KEYS, "avg_acc")
        numbers = [_fmt(s("avg_bits"), 2), _fmt(s("avg_rank"), 1), *(_fmt(s(k), 2) for k in PPL_KEYS)]
        lines.append([*line[:2], *numbers, *line[2:], _fmt(s(MMLU_KEY), 1, 100)])
    out += ["## Quality (perplexity; zero-shot acc in %)", "", *_table(header, lines, keep=2)]
    header = ["method", "seeds", *tasks, "avg acc_norm"]
    lines = [quality(r, NORM_KEYS, "avg_acc_norm") for r in rows]
    if any(value != MISSING for line in lines for value in line[2:]):
        out += ["", "## Zero-shot acc_norm (%)", "", *_table(header, lines, keep=2)]
    ref = f"x {summary.reference}" if summary.reference else "x reference"
    # One device for every cell goes unsaid (the "Measured on" line names it); two or more get a
    # column, since tokens/s and peak memory then compare only between rows of one device.
    mixed = trained_on_several(rows)
    header = ["method", *(["trained on"] if mixed else []), *_titles(EFFICIENCY_COLUMNS), ref]
    header += [*_titles(SEARCH_COST_COLUMNS), "search ran on"]
    lines = [
        [
            r.label,
            *([", ".join(r.trained_on) or MISSING] if mixed else []),
            *_formatted(r, EFFICIENCY_COLUMNS),
            MISSING if r.tokens_per_s_ratio is None else f"{r.tokens_per_s_ratio:.2f}",
            *_formatted(r, SEARCH_COST_COLUMNS),
            ", ".join(r.search_devices) or MISSING,
        ]
        for r in rows
    ]
    out += ["", "## Efficiency", "", *_table(header, lines)]
    out += [
        "",
        "tokens/s: steady (after the warm-up steps). They compare only between cells that had their GPU "
        "to themselves (`qra experiment --jobs` at most the number of GPUs) on one kind of device: the "
        "ratio is given only for labels trained on the reference's device. Search epochs: the proxy "
        "fine-tunes' tokens over one epoch of the search's data; search tokens / fine-tune tokens: the "
        "same tokens over the cell's own fine-tune; search ran on: the device, dtype and `qra search "
        "--preset` of the label's searches (config.json), so search seconds compare only between labels "
        "on one device, and search costs only between labels of one preset.",
    ]
    searched = [r for r in rows if r.n_searches]
    if searched:
        header = ["method", "searches", *_titles(SEARCH_COLUMNS)]
        lines = [[r.label, str(r.n_searches), *_formatted(r, SEARCH_COLUMNS)] for r in searched]
        out += ["", "## Search", "", *_table(header, lines)]
    if reused:  # two rows share one fine-tune: a reader must not count them as two measurements
        out += ["", "## Reused fine-tunes", ""]
        out += [
            f"- {c.label} seed {c.seed}: same plan and seed as {c.reused_from}: results reused "
            "(its fine-tune and eval were not run again)"
            for c in reused
        ]
    missing = [c for c in summary.cells if not c.done]
    if missing:
        out += ["", "## Not done", ""]
        out += [
            f"- {c.label} seed {c.seed}: {c.state}" + (f" ({_short(c.error)})" if c.error else "")
            for c in missing
        ]
    return "\n".join(out) + "\n"


def _short(error: str, width: int = 200) -> str:
    """A runner error for a table line: what failed, its log, and the log's last line, cut."""
    head, sep, rest = error.partition("; see ")
    if not sep:
        return error[:width]
    log, _, lines = rest.partition(": ")
    last = lines.split(" | ")[-1].strip()
    return f"{head}; see {log}" + (f": {last[:width]}" if last else "")


def _clean(value: Any) -> Any:
    """JSON has no NaN or inf: they become null (as eval.json does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_json(summary: ExperimentSummary) -> str:
    """``{"experiment", "reference", "rows", "cells"}`` as pretty JSON (cells with their commands)."""
    cells = [{**asdict(c), "avg_acc": c.avg_acc, "avg_acc_norm": c.avg_acc_norm} for c in summary.cells]
    data = {
        "experiment": summary.experiment,
        "reference": summary.reference,
        "rows": [asdict(r) for r in summary.rows],
        "cells": cells,
    }
    return json.dumps(_clean(data), indent=1)


def write_report(experiment_dir: Path, summary: ExperimentSummary, cells: Sequence[CellResult]) -> list[Path]:
    """Writes results.md, results.json and the plots into ``experiment_dir``, each atomically.

    Plots are skipped when matplotlib is missing; those that need searches are drawn only
    when a done cell has one (see ``plots.plot_all``).

    Returns:
        The paths written.
    """
    from qradaptor.atomic import write_text
    from qradaptor.experiment.plots import plot_all
    from qradaptor.plotting import can_plot

    experiment_dir = Path(experiment_dir)
    paths = [
        write_text(experiment_dir / "results.md", to_markdown(summary)),
        write_text(experiment_dir / "results.json", to_json(summary) + "\n"),
    ]
    if can_plot():
        paths += plot_all(experiment_dir, summary, cells)
    return paths
