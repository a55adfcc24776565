"""An experiment's cell folders read back as plain data: no model, no torch.

    DIR/<experiment>/<label>/seed<k>/cell.json   label, method, budget, seed, search, commands, state
    DIR/<experiment>/<label>/seed<k>/train/      train.json (memory, tokens/s, seconds, tokens)
    DIR/<experiment>/<label>/seed<k>/eval.json   one record per (task, metric)
    DIR/searches/<key>/                          summary.json, plan.json, trials.csv, sensitivity.json
    DIR/searches/logs/<key>/search.log           the search's output

A cell is done when its state is "done" and its eval.json exists. Train, eval and search
files are read only for done cells, and only the small ones: results copied back from a GPU
machine keep no adapter or packed base.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qradaptor.eval.suite import ZERO_SHOT
from qradaptor.search.records import SEARCH_PHASES, best_so_far, records_from_csv

CELL_FILE = "cell.json"
STATES = ("pending", "running", "done", "failed", "stopped")
"""The states a cell.json records."""
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
    """sensitivity.json KL per block at its lowest bit-width (Eq. 6); None without the file."""
    best_so_far: tuple[float, ...]
    """Running minimum of the proxy loss over the search evaluations (trials.csv; Fig. 4)."""
    data_roles: tuple[tuple[str, str], ...] = ()
    """summary.json data_roles: (role, source) pairs; empty for searches from before it was kept."""


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
    weights: str | None = None
    """train.json provenance text: what the model source stores (e.g. a GGUF's tensor types)."""

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


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


_CELL_FIELDS: dict[str, tuple[str, Any]] = {
    "experiment": ("a string", lambda v: isinstance(v, str)),
    "label": ("a string", lambda v: isinstance(v, str) and v != ""),
    "method": ("a string", lambda v: isinstance(v, str)),
    "budget": ("a string or null", _str_or_none),
    "seed": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "search": ("a string or null", _str_or_none),
    "commands": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)),
    "state": (f"one of {STATES}", lambda v: v in STATES),
    "error": ("a string or null", _str_or_none),
}


def _check_cell(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    for key, (rule, ok) in _CELL_FIELDS.items():
        if key not in data:
            raise ValueError(f"{path}: field {key!r} is missing (cell.json needs {list(_CELL_FIELDS)})")
        if not ok(data[key]):
            raise ValueError(f"{path}: field {key!r} must be {rule}, got {data[key]!r}")
    return data


def _need(data: Mapping[str, Any], key: str, path: Path) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object holding {key!r}, got {type(data).__name__}")
    if key not in data:
        raise ValueError(f"{path}: key {key!r} is missing")
    return data[key]


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON null, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _mib(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else number / MIB


def _read_train(path: Path) -> dict[str, Any]:
    data = read_json(path)
    memory = _need(data, "memory", path)
    tokens = _number(_need(data, "tokens", path))
    return {
        "avg_bits": _number(_need(memory, "avg_bits", path)),
        "avg_rank": _number(_need(memory, "avg_rank", path)),
        "peak_mib": _mib(memory.get("measured_peak")),
        "predicted_peak_mib": _mib(memory.get("predicted_peak")),
        "tokens_per_s": _number(_need(data, "steady_tokens_per_second", path)),
        "train_seconds": _number(_need(data, "train_seconds", path)),
        "train_tokens": None if tokens is None else int(tokens),
        "final_eval_loss": _number(data.get("final_eval_loss")),
        "measured_on": _measured_on(data),
        "weights": _weights(data),
    }


def _weights(data: Mapping[str, Any]) -> str | None:
    """The provenance sentence of a train.json (None for one written before it was recorded)."""
    provenance = data.get("provenance")
    text = provenance.get("text") if isinstance(provenance, Mapping) else None
    return text if isinstance(text, str) and text else None


def _measured_on(data: Mapping[str, Any]) -> str | None:
    """ "2026-11-23, NVIDIA H200, torch 2.11.0, ..." from a train.json (None if it says nothing)."""
    versions = data.get("versions") if isinstance(data.get("versions"), Mapping) else {}
    parts = [data.get("date"), data.get("device_name") or data.get("device")]
    parts += [f"{name} {version}" for name, version in sorted(versions.items())]
    text = ", ".join(str(p) for p in parts if p)
    return text or None


def _read_eval(path: Path) -> dict[str, float]:
    results = _need(read_json(path), "results", path)
    if not isinstance(results, list):
        raise ValueError(f"{path}: 'results' must be a list of records, got {type(results).__name__}")
    metrics: dict[str, float] = {}
    for record in results:
        task, metric = _need(record, "task", path), _need(record, "metric", path)
        value = _number(_need(record, "value", path))
        if value is not None:  # a NaN written as null has nothing to average
            metrics[f"{task}/{metric}"] = value
    return metrics


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ValueError naming the file when it is missing or not JSON."""
    if not path.is_file():
        raise ValueError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _per_block(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Bits and ranks per block of a plan.json; a module plan's modules are averaged per block."""
    layers = _need(read_json(path), "layers", path)
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
    data = read_json(path)
    bits, kl = _need(data, "bits", path), _need(data, "kl", path)
    try:
        column = bits.index(min(bits))
        return tuple(float(row[column]) for row in kl)
    except (AttributeError, IndexError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: 'bits' and 'kl' must be a list and rows of one KL per bit-width ({err!r})"
        ) from None


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
    path = folder / "summary.json"
    summary = read_json(path)
    chosen = _need(summary, "chosen", path)
    evaluations, seconds = _need(summary, "evaluations", path), _need(summary, "seconds", path)
    try:
        searched = int(sum(evaluations.get(p, 0) for p in SEARCH_PHASES))
        searched_seconds = float(sum(seconds.get(p, 0.0) for p in SEARCH_PHASES))
    except (AttributeError, TypeError) as err:
        raise ValueError(
            f"{path}: 'evaluations' and 'seconds' must map phases to numbers ({err!r})"
        ) from None
    bits, ranks = _per_block(folder / "plan.json")
    budget = summary.get("budget")
    return SearchInfo(
        path=os.path.relpath(folder, os.path.normpath(experiment_dir)),
        budget=None if budget is None else str(budget),
        evaluations=searched,
        initial_evaluations=int(evaluations.get("initial", 0)),
        total_evaluations=int(_need(summary, "total_evaluations", path)),
        seconds=searched_seconds,
        wall_seconds=_number(summary.get("wall_seconds")),
        cost_epochs=_number(summary.get("search_cost_epochs")),
        proxy_tokens=_number(summary.get("proxy_tokens")),
        pearson=_number(summary.get("bits_sensitivity_pearson")),
        chosen_avg_bits=float(_need(chosen, "avg_bits", path)),
        chosen_loss=_number(_need(chosen, "loss", path)),
        block_bits=bits,
        block_ranks=ranks,
        sensitivity=_lowest_bits_kl(folder / "sensitivity.json"),
        best_so_far=_best_so_far(folder / "trials.csv"),
        data_roles=tuple((str(k), str(v)) for k, v in (summary.get("data_roles") or {}).items()),
    )


def _read_cell(cell_json: Path, experiment_dir: Path) -> CellResult:
    cell = _check_cell(read_json(cell_json), cell_json)
    folder = cell_json.parent
    eval_json = folder / "eval.json"
    done = cell["state"] == "done" and eval_json.is_file()
    error = cell["error"]
    if cell["state"] == "done" and not done:
        error = error or "eval.json missing"
    common = dict(
        experiment=cell["experiment"],
        label=cell["label"],
        method=cell["method"],
        budget=cell["budget"],
        seed=cell["seed"],
        state=cell["state"],
        done=done,
        error=error,
        folder=folder.relative_to(experiment_dir).as_posix(),
        commands=tuple(cell["commands"]),
    )
    if not done:
        return CellResult(**common)
    search = None
    if cell["search"] is not None:
        search = read_search(folder / cell["search"], experiment_dir)
    return CellResult(
        **common,
        **_read_train(folder / "train" / "train.json"),
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
