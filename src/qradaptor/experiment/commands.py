"""An experiment once read: its cells, each a list of ``qra`` commands, and the searches and
profiles that cells share by command.

Plain records: ``experiment/config.py`` makes them from a file, ``experiment/runner.py`` runs
them. A step names the file whose presence says it finished, by the run folders' own names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qradaptor.runfolder.search_run import SEARCH_PLAN
from qradaptor.runfolder.train_run import RUN_ADAPTER, RUN_PLAN


@dataclass(frozen=True)
class Step:
    """One qra command of a cell."""

    verb: str
    """plan, search, train or eval."""
    argv: tuple[str, ...]
    """Its arguments after ``qra VERB``."""
    done: Path
    """The file whose presence means this step has finished."""

    @property
    def command(self) -> str:
        """The shell line that runs it."""
        import shlex

        return shlex.join(["qra", self.verb, *self.argv])

    def finished(self) -> bool:
        """Its file is there and, for an evaluation, holds every task it asks for.

        An eval.json written before the experiment's tasks grew (the pilot study's MMLU) is not
        finished: the runner completes it with ``qra eval --resume``, which scores only the
        missing tasks. A file that lists no tasks (not written by ``qra eval``) counts as
        finished, as any step's file does.
        """
        return self.done.exists() and not self.missing_tasks()

    def missing_tasks(self) -> list[str]:
        """For an eval step whose results file lists its tasks: those it asks for and lacks."""
        if self.verb != "eval" or not self.done.is_file():
            return []
        try:
            held = json.loads(self.done.read_text()).get("meta", {}).get("tasks")
        except (OSError, ValueError, AttributeError):
            return []
        if not isinstance(held, list):
            return []
        from qradaptor.eval.suite import resolve_tasks

        asked = flag_value(self.argv, "--tasks") or "suite"
        return [name for name in resolve_tasks(asked.split(",")) if name not in held]


@dataclass(frozen=True)
class Profile:
    """One ``qra profile`` that every search and knapsack plan of a file reads, run once."""

    key: str
    """Folder name under ``DIR/profiles``: a digest of the command."""
    step: Step
    """The profile command; its ``done`` is the sensitivity.json it writes last (atomically)."""

    @property
    def table(self) -> Path:
        """The sensitivity.json that searches and knapsack plans get as ``--sensitivity``."""
        return self.step.done


@dataclass(frozen=True)
class Search:
    """One ``qra search``, run once however many cells train its plan."""

    key: str
    """Folder name under ``DIR/searches``: budget, seed and a digest of the command."""
    step: Step
    """The search command; its ``done`` is summary.json, which ``qra search`` writes after
    plan.json and the trials (a search killed in between is not taken for finished)."""
    profile: Profile | None = None
    """The shared profile it reads instead of profiling, or None."""

    @property
    def folder(self) -> Path:
        """The ``qra search`` run folder (``DIR/searches/<key>``)."""
        return self.step.done.parent

    @property
    def plan(self) -> Path:
        """The plan the search chooses."""
        return self.folder / SEARCH_PLAN


@dataclass(frozen=True)
class Cell:
    """One (method, budget, seed) of an experiment: its folder and its commands."""

    experiment: str
    """The experiment's name."""
    label: str
    """The method's label, with ``@BUDGET`` for a searched one (e.g. qra@3.5bits)."""
    method: str
    """The ``qra train --method`` it trains with."""
    budget: str | None
    """The search budget, or None."""
    seed: int
    """Seed of the fine-tune (and of the search, unless the method fixes search_seed)."""
    folder: Path
    """``DIR/<experiment>/<label>/seed<k>``."""
    steps: tuple[Step, ...]
    """Its own commands, in order (the search is not among them: see ``search``)."""
    search: Search | None = None
    """The search whose plan it trains, or None."""
    profile: Profile | None = None
    """The shared profile its knapsack plan or its search reads, or None."""

    @property
    def before(self) -> list[Step]:
        """The shared steps it waits for, in order: the profile, then the search."""
        return ([self.profile.step] if self.profile else []) + ([self.search.step] if self.search else [])

    @property
    def commands(self) -> list[str]:
        """Every shell line that reproduces the cell: the profile's and the search's first."""
        return [s.command for s in (*self.before, *self.steps)]

    def lacks_weights(self) -> bool:
        """True when its evaluation is still to run (or to complete) on a finished fine-tune whose
        adapter is not here: a cell folder copied with its results only (the GPU runs bring back
        no weights), which ``qra eval`` would refuse. Only a fine-tune again (``--redo``) helps.
        """
        train = next((s for s in self.steps if s.verb == "train"), None)
        evals = [s for s in self.steps if s.verb == "eval"]
        if train is None or not train.finished() or all(s.finished() for s in evals):
            return False
        run = train.done.parent
        if (run / RUN_ADAPTER).is_dir():
            return False
        try:
            layers = json.loads((run / RUN_PLAN).read_text(encoding="utf-8")).get("layers", {})
            return any(int(spec.get("rank", 0)) > 0 for spec in layers.values())
        except (OSError, ValueError, AttributeError, TypeError):
            return False  # qra eval names what is wrong with the folder


@dataclass(frozen=True)
class Experiment:
    """An experiment file, read."""

    name: str
    """Folder under the output and the results' title."""
    description: str
    """A paragraph for the results page."""
    source: Path
    """The file it was read from."""
    labels: tuple[str, ...]
    """Row order of the results (with budgets)."""
    reference: str | None
    """Label whose tokens/s the others are divided by."""
    cells: tuple[Cell, ...] = field(default_factory=tuple)
    """Every cell, method by method, budget by budget, seed by seed."""


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value a command line gives ``flag`` (the word after it), or None without one."""
    argv = list(argv)
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def digest(argv: list[str]) -> str:
    """Eight hex digits of a command's arguments: the same command, the same shared folder."""
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:8]


def search_key(budget: str, seed: int, argv: list[str]) -> str:
    """The search folder's name: readable budget and seed, plus a digest of the whole command."""
    return f"{budget}-s{seed}-{digest(argv)}"
