"""An experiment's cell folders read back as plain data: no model, no torch.

    DIR/<experiment>/<label>/seed<k>/cell.json   label, method, budget, seed, search, commands, state
    DIR/<experiment>/<label>/seed<k>/train/      train.json (memory, tokens/s, seconds, tokens)
    DIR/<experiment>/<label>/seed<k>/eval.json   one record per (task, metric)
    DIR/searches/<key>/                          summary.json, plan.json, trials.csv, sensitivity.json
    DIR/searches/logs/<key>/search.log           the search's output

The records of these files (cell.json, train.json, summary.json) and their layout are
``runfolder``'s; this module turns them into the report's rows.

A cell is done when its state is "done" and its eval.json exists. Train, eval and search
files are read only for done cells, and only the small ones: results copied back from a GPU
machine keep no adapter or packed base.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qradaptor.eval.suite import ZERO_SHOT
from qradaptor.runfolder.cell import CELL_EVAL, CELL_FILE, CELL_TRAIN, STATES, CellRecord  # noqa: F401
from qradaptor.runfolder.jsonfile import need, number, read_json
from qradaptor.runfolder.search_run import (
    SEARCH_CONFIG,
    SEARCH_PLAN,
    SEARCH_SENSITIVITY,
    SEARCH_SUMMARY,
    SEARCH_TRIALS_CSV,
    SearchSettings,
    SearchSummary,
)
from qradaptor.runfolder.train_run import RUN_TRAIN, TrainRecord
from qradaptor.search.records import SEARCH_PHASES, best_so_far, records_from_csv
from qradaptor.sensitivity_table import SensitivityTable

ACC_KEYS = tuple(f"{task}/acc" for task in ZERO_SHOT)
NORM_KEYS = tuple(f"{task}/acc_norm" for task in ZERO_SHOT)
MIB = 2**20


@dataclass(frozen=True)
class SearchInfo:
    """What a cell's ``qra search`` folder says about the search and the plan it chose."""

    path: str
    """The search folder, relative to the experiment folder (seeds may share one)."""
    budget: str | None
    """summary.json budget, e.g. "3.5 avg bits"."""
    evaluations: int
    """Proxy evaluations of the search phases (initial, nsga2, bayes; references excluded)."""
    initial_evaluations: int
    """Of those, the initial population's (summary.json evaluations.initial)."""
    total_evaluations: int
    """summary.json total_evaluations (references included)."""
    seconds: float
    """Proxy-evaluation seconds of the search phases (summed over resumed runs)."""
    wall_seconds: float | None
    """summary.json wall_seconds: the last ``qra search`` run, profiling included."""
    cost_epochs: float | None
    """summary.json search_cost_epochs: proxy tokens over one epoch of the training data."""
    proxy_tokens: float | None
    """summary.json proxy_tokens: tokens the search's proxy fine-tunes trained on, in all."""
    pearson: float | None
    """summary.json bits_sensitivity_pearson (None without a profile or for a constant plan)."""
    chosen_avg_bits: float
    """summary.json chosen.avg_bits."""
    chosen_loss: float | None
    """summary.json chosen.loss: the best proxy loss within the budget."""
    block_bits: tuple[float, ...]
    """plan.json bits per block (mean over its modules at module granularity)."""
    block_ranks: tuple[float, ...]
    """plan.json LoRA rank per block (mean over its modules at module granularity)."""
    sensitivity: tuple[float, ...] | None
    """sensitivity.json KL per block at its lowest bit-width (Eq. 6), a module profile's summed per
    block; None without the file."""
    best_so_far: tuple[float, ...]
    """Running minimum of the proxy loss over the search evaluations (trials.csv; Fig. 4)."""
    data_roles: tuple[tuple[str, str], ...] = ()
    """summary.json data_roles: (role, source) pairs; empty for searches from before it was kept."""
    device: str | None = None
    """config.json device and dtype, e.g. "cuda fp32" or "cpu fp32": its seconds compare only
    within one; None where config.json is missing, the device alone where it has no dtype."""


@dataclass(frozen=True)
class CellResult:
    """One (label, seed) of an experiment as read from its folder."""

    experiment: str
    """The experiment's name (its folder)."""
    label: str
    """The method's label, e.g. "lora16" or "qra@3.5bits"."""
    method: str
    """The ``qra train --method`` it ran."""
    budget: str | None
    """The search budget, e.g. "3.5bits"; None for an unsearched method."""
    seed: int
    """The training seed."""
    state: str
    """"done", "failed" or "pending", as cell.json records it."""
    done: bool
    """state is "done" and eval.json exists: only these enter the means."""
    error: str | None
    """Why the cell failed, or "eval.json missing" for a done cell without one."""
    folder: str
    """The cell folder, relative to the experiment folder."""
    commands: tuple[str, ...]
    """Shell lines that reproduce the cell."""
    avg_bits: float | None = None
    """train.json memory.avg_bits: average stored bits per block-linear weight."""
    avg_rank: float | None = None
    """train.json memory.avg_rank."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """eval.json values by "task/metric", e.g. "ppl_wiki/ppl", "arc_easy/acc", "boolq/acc_norm"."""
    tokens_per_s: float | None = None
    """train.json steady_tokens_per_second (after the warm-up steps)."""
    peak_mib: float | None = None
    """train.json memory.measured_peak in MiB (None on CPU, where it is not measured)."""
    predicted_peak_mib: float | None = None
    """train.json memory.predicted_peak in MiB."""
    train_seconds: float | None = None
    """train.json train_seconds (inside training steps)."""
    train_tokens: int | None = None
    """train.json tokens (non-padding input tokens trained on)."""
    final_eval_loss: float | None = None
    """train.json final_eval_loss (held-out loss at the end)."""
    search: SearchInfo | None = None
    """The search whose plan the cell trained; None for an unsearched method or an unfinished cell."""
    measured_on: str | None = None
    """train.json's date, device and versions, e.g. "2026-11-23, NVIDIA H200, peft 0.21.0, ..."."""
    trained_on: str | None = None
    """train.json's device name (e.g. "NVIDIA H200"), or its device where no name was recorded:
    tokens/s compare only between cells trained on one."""
    weights: str | None = None
    """train.json provenance text: what the model source stores (e.g. a GGUF's tensor types)."""
    reused_from: str | None = None
    """cell.json reused_from: the cell (``<experiment>/<label>/seed<k>``) whose fine-tune and eval
    this cell's results are copies of, same plan, seed and recipe; None: measured by its own."""

    @property
    def avg_acc(self) -> float | None:
        """Mean acc over the seven zero-shot tasks; None unless all seven were evaluated."""
        return _mean_of(self.metrics, ACC_KEYS)

    @property
    def avg_acc_norm(self) -> float | None:
        """Mean acc_norm over the seven zero-shot tasks; None unless all seven were evaluated."""
        return _mean_of(self.metrics, NORM_KEYS)


def _mean_of(metrics: Mapping[str, float], keys: Sequence[str]) -> float | None:
    # A partial average would silently compare different task sets across methods.
    if not all(k in metrics for k in keys):
        return None
    return sum(metrics[k] for k in keys) / len(keys)


def _mib(value: Any) -> float | None:
    found = number(value)
    return None if found is None else found / MIB


def _read_train(path: Path) -> dict[str, Any]:
    record = TrainRecord.from_dict(read_json(path), path)
    memory = record.memory
    return {
        "avg_bits": number(memory.avg_bits),
        "avg_rank": number(memory.avg_rank),
        "peak_mib": _mib(memory.measured_peak),
        "predicted_peak_mib": _mib(memory.predicted_peak),
        "tokens_per_s": record.steady_tokens_per_second,
        "train_seconds": record.train_seconds,
        "train_tokens": record.tokens,
        "final_eval_loss": record.final_eval_loss,
        "measured_on": record.measured_on,
        "trained_on": record.device_name or record.device,
        "weights": record.weights,
    }


def _read_eval(path: Path) -> dict[str, float]:
    results = need(read_json(path), "results", path)
    if not isinstance(results, list):
        raise ValueError(f"{path}: 'results' must be a list of records, got {type(results).__name__}")
    metrics: dict[str, float] = {}
    for record in results:
        task, metric = need(record, "task", path), need(record, "metric", path)
        value = number(need(record, "value", path))
        if value is not None:  # a NaN written as null has nothing to average
            metrics[f"{task}/{metric}"] = value
    return metrics


def _per_block(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Bits and ranks per block of a plan.json; a module plan's modules are averaged per block."""
    layers = need(read_json(path), "layers", path)
    groups: dict[int, list[tuple[int, int]]] = {}
    try:
        for key, spec in layers.items():
            groups.setdefault(int(str(key).partition(".")[0]), []).append((spec["bits"], spec["rank"]))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: 'layers' must map '<block>[.<module>]' to {{bits, rank}} ({err!r})"
        ) from None
    blocks = [groups[b] for b in sorted(groups)]
    bits = tuple(sum(b for b, _ in specs) / len(specs) for specs in blocks)
    return bits, tuple(sum(r for _, r in specs) / len(specs) for specs in blocks)


def _lowest_bits_kl(path: Path) -> tuple[float, ...] | None:
    if not path.is_file():  # a search run with --no-profile has none
        return None
    try:
        return SensitivityTable.from_dict(read_json(path)).block_profile()
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a sensitivity file qra profile writes ({err!r})") from None


def _best_so_far(path: Path) -> tuple[float, ...]:
    if not path.is_file():
        return ()
    try:
        records = records_from_csv(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return tuple(best_so_far(sorted(records, key=lambda r: r.number)))


def read_search(folder: Path, experiment_dir: Path) -> SearchInfo:
    """Reads a ``qra search`` folder: summary.json and plan.json (needed), trials.csv and
    sensitivity.json (where present).

    Raises:
        ValueError: A needed file missing, or a file not in the format ``qra search`` writes.
    """
    folder = Path(os.path.normpath(folder))  # "seed0/../../../searches/k" reads better resolved
    summary = SearchSummary.load(folder)
    try:
        searched = int(sum(summary.evaluations.get(p, 0) for p in SEARCH_PHASES))
        searched_seconds = float(sum(summary.seconds.get(p, 0.0) for p in SEARCH_PHASES))
    except (AttributeError, TypeError) as err:
        raise ValueError(
            f"{folder / SEARCH_SUMMARY}: 'evaluations' and 'seconds' must map phases to numbers ({err!r})"
        ) from None
    bits, ranks = _per_block(folder / SEARCH_PLAN)
    return SearchInfo(
        path=os.path.relpath(folder, os.path.normpath(experiment_dir)),
        budget=None if summary.budget is None else str(summary.budget),
        evaluations=searched,
        initial_evaluations=int(summary.evaluations.get("initial", 0)),
        total_evaluations=int(summary.total_evaluations),
        seconds=searched_seconds,
        wall_seconds=number(summary.wall_seconds),
        cost_epochs=number(summary.search_cost_epochs),
        proxy_tokens=number(summary.proxy_tokens),
        pearson=number(summary.bits_sensitivity_pearson),
        chosen_avg_bits=float(summary.chosen.avg_bits),
        chosen_loss=number(summary.chosen.loss),
        block_bits=bits,
        block_ranks=ranks,
        sensitivity=_lowest_bits_kl(folder / SEARCH_SENSITIVITY),
        best_so_far=_best_so_far(folder / SEARCH_TRIALS_CSV),
        data_roles=tuple((str(k), str(v)) for k, v in (summary.data_roles or {}).items()),
        device=_search_device(folder),
    )


def _search_device(folder: Path) -> str | None:
    """config.json's device, dtype and --preset (see ``SearchInfo.device``): a search given no
    --preset sizes itself by its device (quick on the CPU, full on CUDA), so one experiment
    resumed on another machine can hold searches of two sizes under one label."""
    if not (folder / SEARCH_CONFIG).is_file():
        return None
    settings = SearchSettings.load(folder).settings
    parts = [str(settings[k]) for k in ("device", "dtype") if settings.get(k)]
    if settings.get("preset"):
        parts.append(f"{settings['preset']} preset")
    return " ".join(parts) or None


def _read_cell(cell_json: Path, experiment_dir: Path) -> CellResult:
    cell = CellRecord.from_dict(read_json(cell_json), cell_json)
    folder = cell_json.parent
    eval_json = folder / CELL_EVAL
    done = cell.state == "done" and eval_json.is_file()
    error = cell.error
    if cell.state == "done" and not done:
        error = error or "eval.json missing"
    common = dict(
        experiment=cell.experiment,
        label=cell.label,
        method=cell.method,
        budget=cell.budget,
        seed=cell.seed,
        state=cell.state,
        done=done,
        error=error,
        folder=folder.relative_to(experiment_dir).as_posix(),
        commands=cell.commands,
        reused_from=cell.reused_from,
    )
    if not done:
        return CellResult(**common)
    search = None
    if cell.search is not None:
        search = read_search(folder / cell.search, experiment_dir)
    return CellResult(
        **common,
        **_read_train(folder / CELL_TRAIN / RUN_TRAIN),
        metrics=_read_eval(eval_json),
        search=search,
    )


def collect(experiment_dir: Path, labels: Sequence[str] | None = None) -> list[CellResult]:
    """Reads every ``<label>/seed*/cell.json`` under ``experiment_dir`` with its results.

    Train, eval and search files are read only for done cells; the adapter and packed base
    are never needed (results copied back from a GPU machine keep only the small files).

    Args:
        experiment_dir: ``DIR/<experiment>``.
        labels: Label folders to read, in this order; None: every one, sorted.

    Returns:
        The cells, label by label, each label's by seed.

    Raises:
        ValueError: No cell.json under ``experiment_dir`` (or under a label named in
            ``labels``), or a cell.json, train.json, eval.json or search file that is missing
            where needed or not in its format; the message names the file.
    """
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise ValueError(
            f"experiment_dir must be an experiment folder, got {experiment_dir} (no such folder)"
        )
    found = sorted({p.parent.parent.name for p in experiment_dir.glob(f"*/seed*/{CELL_FILE}")})
    if labels is None:
        labels = found
    if not labels:
        raise ValueError(f"{experiment_dir}: no <label>/seed<k>/{CELL_FILE} in it")
    cells: list[CellResult] = []
    for label in labels:
        paths = list((experiment_dir / label).glob(f"seed*/{CELL_FILE}"))
        if not paths:
            raise ValueError(
                f"{experiment_dir / label}: no seed<k>/{CELL_FILE} for label {label!r}; found {found}"
            )
        cells += sorted((_read_cell(p, experiment_dir) for p in paths), key=lambda c: c.seed)
    return cells
