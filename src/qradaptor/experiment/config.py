"""An experiment file (YAML) read into cells: methods x budgets x seeds, each a list of qra commands.

A cell is one (method, budget, seed) run end to end. Its steps are ordinary ``qra``
command lines, so the folder it leaves is what a user running those commands by hand
would get, and every number in a results table can be re-made from the line next to it:

    [qra plan ...]       a hand-made plan (e.g. the pilot study's Configs C and D)
    [qra search ...]     a searched plan; shared by every cell with the same search
    qra train ...        the fine-tune (its run folder: train/)
    qra eval --run ...   the evaluation of exactly what was trained (eval.json)

The file::

    name: pilot                      # folder under -o, and the results' title
    description: ...                 # one paragraph for the results page
    model: null                      # hub id, directory or .gguf; omitted: embedded SmolLM2
    seeds: [0, 1, 2]
    reference: lora16                # tokens/s are also given relative to this label
    train: {epochs: 1, batch_size: 32}    # qra train options of every cell
    eval: {tasks: suite, limit: 1000}     # qra eval options of every cell
    search: {steps: 30}                   # qra search options of every searched method
    profile: {samples: 8, seq_len: 512}   # optional: one qra profile that every search and
                                          # knapsack plan reads (--sensitivity), not one each
    methods:
      - label: lora16
        method: lora16
      - label: C
        plan: {bits: 4x15,2x15, ranks: 8x15,16x15}
      - label: knapsack
        plan: knapsack               # qra plan --baseline knapsack at each budget
        budgets: [4.0bits]
      - label: knapsack-dq           # its own profile and qra plan options
        plan: knapsack
        profile: {bits: [2, 3, 4, 5, 6, 8], double_quant: true}
        knapsack: {bits: [2, 3, 4, 5, 6, 8], double_quant: true}
        budgets: [4.0bits]
      - label: qra
        search: {}                   # this method's own search options, over the shared ones
        budgets: [3.5bits, 5.0bits]

Options are written as in the command line with ``_`` for ``-`` (``batch_size: 32`` is
``--batch-size 32``); ``true`` is a bare flag, a list is joined by commas. The CLI checks
each command against the verb's own parser before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qradaptor.experiment.fields import (
    KNAPSACK_RESERVED,
    check_keys,
    check_name,
    check_seeds,
    expand_per_block,
    is_budget,
    is_count,
    merged_argv,
    options_argv,
)
from qradaptor.runfolder.cell import CELL_EVAL, CELL_TRAIN
from qradaptor.runfolder.search_run import SEARCH_PLAN, SEARCH_SUMMARY
from qradaptor.runfolder.train_run import RUN_TRAIN

TOP_KEYS = (
    "name",
    "description",
    "model",
    "seeds",
    "reference",
    "train",
    "eval",
    "search",
    "profile",
    "methods",
)
"""Keys an experiment file may have."""
METHOD_KEYS = (
    "label",
    "method",
    "plan",
    "search",
    "budgets",
    "search_seed",
    "train",
    "seeds",
    "profile",
    "knapsack",
)
"""Keys a ``methods`` entry may have."""


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


def _where(source: Path, key: str) -> str:
    return f"{source}: {key}"


def _digest(argv: list[str]) -> str:
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:8]


def search_key(budget: str, seed: int, argv: list[str]) -> str:
    """The search folder's name: readable budget and seed, plus a digest of the whole command."""
    return f"{budget}-s{seed}-{_digest(argv)}"


def _flag_value(argv: list[str] | tuple[str, ...], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _reads(profile: Profile, search_argv: list[str]) -> bool:
    """Whether a search takes the shared table: it profiles (no --no-profile), has no table of
    its own, and calibrates on the profile's text (a search on other --data profiles that)."""
    if {"--sensitivity", "--no-profile"} & set(search_argv):
        return False
    return _flag_value(search_argv, "--data") == _flag_value(profile.step.argv, "--data")


def _shared_profile(options: Any, root: Path, model_argv: list[str], where: str) -> Profile:
    """The file's ``profile:`` as one ``qra profile`` into ``DIR/profiles/<digest>``."""
    argv = [*model_argv, *options_argv(options or {}, "profile", where)]
    key = f"profile-{_digest(argv)}"
    out = root / "profiles" / key
    return Profile(key, Step("profile", (*argv, "-o", str(out)), out / "sensitivity.json"))


def load(path: str | Path, output: str | Path) -> Experiment:
    """Reads an experiment file into its cells under ``output``.

    Args:
        path: the YAML file.
        output: the experiments' folder (``qra experiment -o``).

    Returns:
        The experiment; nothing is run or written.

    Raises:
        ValueError: a missing file, bad YAML or any key or value the format does not accept,
            naming the file, the key and what is accepted.
    """
    import yaml

    source, root = Path(path), Path(output)
    if not source.is_file():
        raise ValueError(f"experiment file {str(source)!r} does not exist")
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{source} must be a mapping with name, seeds and methods; got {type(data).__name__}"
        )
    check_keys(data, TOP_KEYS, str(source))
    for key in ("name", "methods"):
        if key not in data:
            raise ValueError(f"{source}: {key!r} is missing")
    name = check_name(data["name"], _where(source, "name"))
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"{source}: model must be a hub id, a directory or a .gguf path, got {model!r}")
    seeds = check_seeds(data.get("seeds", [0]), _where(source, "seeds"))
    shared: dict[str, Any] = {verb: data.get(verb) for verb in ("train", "eval", "search")}
    for verb, options in shared.items():
        options_argv(options, verb, _where(source, verb))
    model_argv = [model] if model else []
    shared["profile"] = None
    if "profile" in data:
        shared["profile"] = _shared_profile(data["profile"], root, model_argv, _where(source, "profile"))
    methods = data["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{source}: methods must be a non-empty list, got {methods!r}")
    cells: list[Cell] = []
    labels: list[str] = []
    for index, entry in enumerate(methods):
        where = _where(source, f"methods[{index}]")
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping with a label, got {entry!r}")
        check_keys(entry, METHOD_KEYS, where)
        for cell in _method_cells(entry, where, name, root, model_argv, seeds, shared):
            if cell.label not in labels:
                labels.append(cell.label)
            cells.append(cell)
    seen: set[tuple[str, int]] = set()
    for c in cells:
        if (c.label, c.seed) in seen:
            raise ValueError(f"{source}: labels must be unique, {c.label!r} is used twice")
        seen.add((c.label, c.seed))
    reference = data.get("reference")
    if reference is not None and reference not in labels:
        raise ValueError(f"{source}: reference {reference!r} is none of the labels ({', '.join(labels)})")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"{source}: description must be text, got {description!r}")
    return Experiment(name, description.strip(), source, tuple(labels), reference, tuple(cells))


def _method_cells(
    entry: dict,
    where: str,
    experiment: str,
    root: Path,
    model_argv: list[str],
    seeds: list[int],
    shared: dict[str, Any],
) -> list[Cell]:
    if "label" not in entry:
        raise ValueError(f"{where}: 'label' is missing")
    label = check_name(entry["label"], f"{where}.label")
    plan, search = entry.get("plan"), entry.get("search", None)
    if plan is not None and "search" in entry:
        raise ValueError(f"{where} ({label}): give plan or search, not both")
    method = entry.get("method", "lora" if plan is not None or "search" in entry else None)
    if not isinstance(method, str):
        raise ValueError(f"{where} ({label}): needs a method (e.g. lora16, qlora-4), a plan or a search")
    budgets = entry.get("budgets")
    if "search" in entry or plan == KNAPSACK:
        what = "a search" if "search" in entry else "the knapsack plan"
        if not isinstance(budgets, list) or not budgets or not all(is_budget(b) for b in budgets):
            raise ValueError(f"{where} ({label}): {what} needs budgets, a list like [3.5bits, 5.0bits]")
        budgets = [str(b) for b in budgets]
    elif budgets is not None:
        raise ValueError(f"{where} ({label}): budgets go with a search or plan: knapsack")
    seeds = check_seeds(entry["seeds"], f"{where}.seeds") if "seeds" in entry else seeds
    search_seed = entry.get("search_seed")
    if search_seed is not None and (not is_count(search_seed) or "search" not in entry):
        raise ValueError(f"{where} ({label}): search_seed is an integer >= 0 and goes with a search")
    train_argv = merged_argv(shared["train"], entry.get("train"), "train", where)
    eval_argv = options_argv(shared["eval"], "eval", f"{where} (shared eval)")
    if "knapsack" in entry and plan != KNAPSACK:
        raise ValueError(f"{where} ({label}): knapsack options go with plan: knapsack")
    knapsack_argv = options_argv(entry.get("knapsack"), "plan", f"{where}.knapsack", KNAPSACK_RESERVED)
    search_argv: list[str] | None = None
    profile: Profile | None = shared["profile"]
    if "profile" in entry:  # this method's own table (other bits, 8-bit metadata), shared by its cells
        if "search" not in entry and plan != KNAPSACK:
            raise ValueError(f"{where} ({label}): profile goes with a search or plan: knapsack")
        profile = _shared_profile(entry["profile"], root, model_argv, f"{where}.profile")
    if "search" in entry:
        search_argv = merged_argv(shared["search"], search or {}, "search", where)
        if profile is not None and _reads(profile, search_argv):
            search_argv += ["--sensitivity", str(profile.table)]
        elif "profile" in entry:
            raise ValueError(
                f"{where} ({label}): its search would not read its profile (it has --no-profile, "
                "--sensitivity or a --data other than the profile's)"
            )
        else:  # a search that profiles itself (or not at all, an ablation) does not wait for it
            profile = None
    plan_spec = _plan_spec(plan, f"{where}.plan") if plan not in (None, KNAPSACK) else None
    if plan not in (None, KNAPSACK) or (plan is None and "search" not in entry):
        profile = None
    cells: list[Cell] = []
    for budget in budgets or [None]:
        if plan == KNAPSACK:  # the exact allocator at this budget over the shared profile, or its own
            plan_spec = ["--baseline", KNAPSACK, "--budget", str(budget), *knapsack_argv]
            if profile is not None:
                plan_spec += ["--sensitivity", str(profile.table)]
        cell_label = f"{label}@{budget}" if budget else label
        for seed in seeds:
            folder = root / experiment / cell_label / f"seed{seed}"
            found: Search | None = None
            if search_argv is not None:
                assert budget is not None
                seed_of_search = seed if search_seed is None else search_seed
                argv = [*model_argv, "--budget", budget, "--seed", str(seed_of_search), *search_argv]
                key = search_key(budget, seed_of_search, argv)
                out = root / "searches" / key
                found = Search(key, Step("search", (*argv, "-o", str(out)), out / SEARCH_SUMMARY), profile)
            cells.append(
                _cell(
                    experiment,
                    cell_label,
                    method,
                    budget,
                    seed,
                    folder,
                    found,
                    plan_spec,
                    model_argv,
                    train_argv,
                    eval_argv,
                    profile,
                )
            )
    return cells


KNAPSACK = "knapsack"
"""``plan: knapsack`` (with budgets): ``qra plan --baseline knapsack --budget B`` in each cell."""


def _plan_spec(plan: Any, where: str) -> list[str] | str:
    """qra plan arguments for a hand-made plan, or the --plan value (file or uniform:B:R) as is."""
    if isinstance(plan, str):
        return plan
    if not isinstance(plan, dict) or set(plan) - {"bits", "ranks"} or not {"bits", "ranks"} <= set(plan):
        raise ValueError(
            f"{where} must be uniform:BITS:RANK, a plan file, or {{bits: ..., ranks: ...}} "
            f"(each a number, a list or like 4x15,2x15), got {plan!r}"
        )
    return [
        "--bits",
        expand_per_block(plan["bits"], f"{where}.bits"),
        "--ranks",
        expand_per_block(plan["ranks"], f"{where}.ranks"),
    ]


def _cell(
    experiment: str,
    label: str,
    method: str,
    budget: str | None,
    seed: int,
    folder: Path,
    search: Search | None,
    plan_spec: list[str] | str | None,
    model_argv: list[str],
    train_argv: list[str],
    eval_argv: list[str],
    profile: Profile | None,
) -> Cell:
    steps: list[Step] = []
    plan_argv: list[str] = []
    if isinstance(plan_spec, list):
        made = folder / "plan.json"
        steps.append(Step("plan", (*model_argv, *plan_spec, "-o", str(made)), made))
        plan_argv = ["--plan", str(made)]
    elif isinstance(plan_spec, str):
        plan_argv = ["--plan", plan_spec]
    elif search is not None:
        plan_argv = ["--plan", str(search.plan)]
    run = folder / CELL_TRAIN
    steps.append(
        Step(
            "train",
            (*model_argv, "--method", method, *plan_argv, "--seed", str(seed), *train_argv, "-o", str(run)),
            run / RUN_TRAIN,
        )
    )
    result = folder / CELL_EVAL
    steps.append(Step("eval", ("--run", str(run), *eval_argv, "-o", str(result)), result))
    return Cell(experiment, label, method, budget, seed, folder, tuple(steps), search, profile)
