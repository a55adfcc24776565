"""A cell that would fine-tune exactly what a finished cell fine-tuned takes its results instead.

Two cells compute the same thing when they train the same plan with the same seed and the same
``qra train`` and ``qra eval`` options: a search that chose the knapsack's plan (most searches at
most budgets, docs/ALLOCATION.md) would otherwise spend a fine-tune and an evaluation on a copy.
Their **fingerprint** is a digest of

    plan    the plan file's JSON less its ``name`` (or the ``uniform:B:R`` spec as written; None
            for a named method without --plan)
    seed    the fine-tune's seed
    train   ``qra train``'s arguments, with --plan and -o (which name cell folders) as placeholders,
            and a method that trains as another on this plan under that other's name
            (``TRAINS_AS``: amq-lora is LoRA on a plan of one rank)
    eval    ``qra eval``'s arguments, with --run and -o as placeholders

so the model, method, data, lr, limit, tasks and every other option count, and the folders do
not. The runner's own additions (--device, --resume, --no-progress) are not in it: a cell's
results do not depend on them beyond what a rerun's resume already accepts.

A reusing cell gets copies of the twin's small result files (train/train.json, eval.json), never
its adapter or packed base; its cell.json names the twin (``reused_from``, ``reused_run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qradaptor.atomic import atomic_file
from qradaptor.experiment.cell_state import write_cell_record
from qradaptor.experiment.commands import Cell, flag_value
from qradaptor.redact import redact
from qradaptor.runfolder.cell import CELL_EVAL, CELL_FILE, CELL_PLAN, CELL_TRAIN, CellRecord
from qradaptor.runfolder.search_run import SEARCH_PLAN
from qradaptor.runfolder.train_run import RUN_TRAIN

FINGERPRINT_VERSION = 1
"""Part of every fingerprint: a change to what goes into it makes old and new ones differ."""
PATH_FLAGS: Mapping[str, Mapping[str, str]] = {
    "train": {"--plan": "<plan>", "-o": "<run>"},
    "eval": {"--run": "<run>", "-o": "<eval>"},
}
"""Per verb, the options that name a cell's own files (config sets them: a file may not), and
what stands in for their values. The plan's content enters the fingerprint on its own."""
TRAINS_AS: Mapping[str, str] = {"amq-lora": "lora"}
"""Methods that, on a plan of one rank everywhere, train exactly as another (train/methods.py:
amq-lora checks that its plan has one rank, then trains it as lora does). On any other plan the
name is kept, so a cell whose plan the method refuses never takes a twin's results."""
UNIFORM = "uniform:"
"""How a --plan value that is a spec, not a file, begins (``qra train --plan uniform:B:R``)."""


@dataclass(frozen=True)
class Twin:
    """A done cell whose results another cell can take."""

    name: str
    """``<experiment>/<label>/seed<k>`` under the output folder."""
    folder: Path
    """Its cell folder."""


def normalised(verb: str, argv: Sequence[str]) -> list[str]:
    """``argv`` of ``qra VERB`` with the values of its ``PATH_FLAGS`` replaced by placeholders.

    Each token is redacted as cell.json's command lines are, so a fingerprint computed from the
    recorded commands equals the one computed from the live arguments.
    """
    flags = PATH_FLAGS[verb]
    out = [redact(a) for a in argv]
    for i, token in enumerate(out[:-1]):
        if token in flags:
            out[i + 1] = flags[token]
    return out


def _one_rank(plan: Mapping[str, Any] | str | None) -> bool:
    """True for a plan file's content whose every layer has one and the same rank."""
    layers = plan.get("layers") if isinstance(plan, Mapping) else None
    if not isinstance(layers, Mapping) or not layers:
        return False
    ranks = {layer.get("rank") if isinstance(layer, Mapping) else None for layer in layers.values()}
    return len(ranks) == 1 and None not in ranks


def _trained_as(argv: list[str], plan: Mapping[str, Any] | str | None) -> list[str]:
    """``argv`` (normalised) with a ``TRAINS_AS`` method renamed where the plan has one rank."""
    method = flag_value(argv, "--method")
    if method not in TRAINS_AS or not _one_rank(plan):
        return argv
    i = argv.index("--method") + 1
    return [*argv[:i], TRAINS_AS[method], *argv[i + 1 :]]


def plan_content(path: Path) -> dict[str, Any] | None:
    """The plan file's JSON object less its ``name``; None when unreadable.

    The JSON as written rather than a parsed ``Plan``: parsing would import torch into the
    runner, and ``qra plan`` and ``qra search`` both write ``Plan.to_json``, so equal plans have
    equal objects (the same fields as ``Plan.plan_hash``). Two spellings of one plan (16 and 16.0)
    differ here: a missed reuse, never a false one.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: v for k, v in data.items() if k != "name"}


def fingerprint(
    plan: Mapping[str, Any] | str | None, seed: int, train_argv: Sequence[str], eval_argv: Sequence[str]
) -> str:
    """sha256 (16 hex digits) of what a cell's fine-tune and eval compute.

    Args:
        plan: the plan's content (``plan_content``), a ``uniform:B:R`` spec, or None (no --plan).
        seed: the fine-tune's seed.
        train_argv: ``qra train``'s arguments after the verb, as the cell runs them.
        eval_argv: ``qra eval``'s arguments after the verb.

    Returns:
        The digest; equal for cells that differ only in their folders and the plan's name.
    """
    payload = {
        "version": FINGERPRINT_VERSION,
        "plan": plan,
        "seed": seed,
        "train": _trained_as(normalised("train", train_argv), plan),
        "eval": normalised("eval", eval_argv),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan(value: str | None, file: Path | None) -> tuple[bool, Mapping[str, Any] | str | None]:
    """(known, plan) for a --plan value: a spec as is, a file's content, or None without one."""
    if value is None:
        return True, None
    if value.startswith(UNIFORM):
        return True, value
    content = plan_content(file if file is not None else Path(value))
    return content is not None, content


def cell_fingerprint(cell: Cell) -> str | None:
    """The fingerprint of a cell about to fine-tune (its plan made); None while its plan file
    cannot be read."""
    steps = {step.verb: step for step in cell.steps}
    train, evaluate = steps["train"], steps["eval"]
    known, plan = _plan(flag_value(train.argv, "--plan"), None)
    return fingerprint(plan, cell.seed, train.argv, evaluate.argv) if known else None


def recorded_fingerprint(folder: Path, record: CellRecord) -> str | None:
    """A finished cell's fingerprint: the one its cell.json holds, else one made from the command
    lines it recorded and the plan its ``qra plan`` step or its search left.

    The plan is looked up by the cell's layout (its own plan.json, or its search folder relative to
    it), not by the --plan path in the command, which is relative to wherever the runner was
    started and dangles once results are copied elsewhere. None: no train and eval line, or the
    plan is gone.
    """
    if record.fingerprint is not None:
        return record.fingerprint
    lines = {}
    for command in record.commands:
        words = shlex.split(command)
        if len(words) >= 2 and words[0] == "qra":
            lines[words[1]] = words[2:]
    if "train" not in lines or "eval" not in lines:
        return None
    file = None
    if "plan" in lines:
        file = folder / CELL_PLAN
    elif record.search is not None:
        file = folder / record.search / SEARCH_PLAN
    known, plan = _plan(flag_value(lines["train"], "--plan"), file)
    return fingerprint(plan, record.seed, lines["train"], lines["eval"]) if known else None


def find_twin(cell: Cell, wanted: str) -> Twin | None:
    """The first done cell of ``cell``'s output folder (any experiment there) with fingerprint
    ``wanted``, other than ``cell``, that ran its own fine-tune; None if there is none.

    Done as ``cells.py`` has it (state "done" and eval.json present) and with its train.json: a
    failed, stopped or half-copied cell is never a twin. A cell that itself reused is skipped: its
    twin, where the adapter is, matches as well.
    """
    root = cell.folder.parents[2]  # DIR of DIR/NAME/LABEL/seedK
    here = cell.folder.resolve()
    for path in sorted(root.glob(f"*/*/seed*/{CELL_FILE}")):
        other = path.parent
        if other.resolve() == here:
            continue
        try:
            record = CellRecord.load(other)
        except ValueError:  # another cell's broken record is its own report's business
            continue
        finished = (other / CELL_EVAL).is_file() and (other / CELL_TRAIN / RUN_TRAIN).is_file()
        if record.state != "done" or not finished or record.reused_from is not None:
            continue
        if recorded_fingerprint(other, record) == wanted:
            return Twin(other.relative_to(root).as_posix(), other)
    return None


def twin_before_run(cell: Cell) -> Twin | None:
    """The twin a run would give ``cell`` at its fine-tune, as far as the files tell before the run
    starts (``qra experiment --dry-run``): its fine-tune is still to run, its plan is made (a search
    or ``qra plan`` step that finished, or a uniform spec) and a done cell of its output folder has
    its fingerprint. A cell whose plan is still to be made, or whose twin the run itself would
    finish first, is not foreseen: None, as for a cell that fine-tunes."""
    train = next(step for step in cell.steps if step.verb == "train")
    if train.finished():
        return None
    wanted = cell_fingerprint(cell)
    return find_twin(cell, wanted) if wanted else None


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as tmp:
        shutil.copyfile(source, tmp)


def copy_results(twin: Twin, folder: Path) -> str:
    """Copies the twin's eval.json, then its train/train.json, into ``folder``.

    eval.json first: train.json marks the fine-tune done, so a copy cut short in between leaves the
    cell's train step to do, and the next run copies again (or ``undo_copy`` clears it).

    Returns:
        The twin's run folder relative to ``folder`` (cell.json's ``reused_run``).
    """
    _copy(twin.folder / CELL_EVAL, folder / CELL_EVAL)
    _copy(twin.folder / CELL_TRAIN / RUN_TRAIN, folder / CELL_TRAIN / RUN_TRAIN)
    return os.path.relpath(twin.folder / CELL_TRAIN, folder)


def take_twin(cell: Cell, twin: Twin, wanted: str) -> None:
    """Makes ``cell`` done with the twin's results: cell.json names the twin first (so a copy cut
    short is known for one), then the files are copied, then cell.json says done.

    Args:
        cell: the cell about to fine-tune.
        twin: the done cell with the same fingerprint (``find_twin``).
        wanted: that fingerprint.
    """
    write_cell_record(cell, "running", fingerprint=wanted, reused_from=twin.name)
    run = copy_results(twin, cell.folder)
    write_cell_record(cell, "done", fingerprint=wanted, reused_from=twin.name, reused_run=run)


def undo_copy(folder: Path) -> None:
    """Removes the result files a reuse copied into ``folder``, so the cell fine-tunes itself.

    For a cell whose cell.json names a twin but whose fine-tune is to run after all (reuse turned
    off, the twin gone, or a copy cut short): its eval.json is not of the fine-tune to come.
    """
    (folder / CELL_EVAL).unlink(missing_ok=True)
    (folder / CELL_TRAIN / RUN_TRAIN).unlink(missing_ok=True)
