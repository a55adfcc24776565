"""One ``methods`` entry of an experiment file made into its cells: a hand-made plan, the
knapsack plan at each budget, or a search at each budget, then train and eval, seed by seed.

``experiment/config.py`` checks the file's top level and hands each entry here with the options
every cell shares; the shared profile and search are named by a digest of their command, so
cells that run the same command share one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qradaptor.experiment.commands import Cell, Profile, Search, Step, digest, flag_value, search_key
from qradaptor.experiment.fields import (
    KNAPSACK_RESERVED,
    check_name,
    check_seeds,
    expand_per_block,
    is_budget,
    is_count,
    merged_argv,
    options_argv,
)
from qradaptor.runfolder.cell import CELL_EVAL, CELL_PLAN, CELL_TRAIN
from qradaptor.runfolder.search_run import SEARCH_SUMMARY
from qradaptor.runfolder.train_run import RUN_TRAIN

KNAPSACK = "knapsack"
"""``plan: knapsack`` (with budgets): ``qra plan --baseline knapsack --budget B`` in each cell."""


def _reads(profile: Profile, search_argv: list[str]) -> bool:
    """Whether a search takes the shared table: it profiles (no --no-profile), has no table of
    its own, and calibrates on the profile's text (a search on other --data profiles that)."""
    if {"--sensitivity", "--no-profile"} & set(search_argv):
        return False
    return flag_value(search_argv, "--data") == flag_value(profile.step.argv, "--data")


def shared_profile(options: Any, root: Path, model_argv: list[str], where: str) -> Profile:
    """The file's ``profile:`` as one ``qra profile`` into ``DIR/profiles/<digest>``."""
    argv = [*model_argv, *options_argv(options or {}, "profile", where)]
    key = f"profile-{digest(argv)}"
    out = root / "profiles" / key
    return Profile(key, Step("profile", (*argv, "-o", str(out)), out / "sensitivity.json"))


def method_cells(
    entry: dict,
    where: str,
    experiment: str,
    root: Path,
    model_argv: list[str],
    seeds: list[int],
    shared: dict[str, Any],
) -> list[Cell]:
    """The cells of one ``methods`` entry: each budget (if any) by each seed.

    Args:
        entry: the entry, its keys already checked against ``config.METHOD_KEYS``.
        where: the file and entry, for error messages.
        experiment: the experiment's name.
        root: the experiments' folder (``qra experiment -o``).
        model_argv: the model argument of every command (empty for the embedded model).
        seeds: the file's seeds (an entry may give its own).
        shared: the file's ``train``, ``eval`` and ``search`` options and its ``Profile`` or None.

    Raises:
        ValueError: a key or value the entry does not accept, naming ``where`` and the label.
    """
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
        profile = shared_profile(entry["profile"], root, model_argv, f"{where}.profile")
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


def _plan_spec(plan: Any, where: str) -> list[str] | str:
    """qra plan arguments for a hand-made plan, or the --plan value (file or uniform:B:R) as is.

    A hand-made plan is ``{bits: ..., ranks: ...}`` plus any other ``qra plan`` option (e.g.
    ``double_quant: true``, so a uniform plan with 8-bit scales and zeros can sit at a budget).
    """
    if isinstance(plan, str):
        return plan
    if not isinstance(plan, dict) or not {"bits", "ranks"} <= set(plan):
        raise ValueError(
            f"{where} must be uniform:BITS:RANK, a plan file, or {{bits: ..., ranks: ...}} "
            f"(each a number, a list or like 4x15,2x15, with other qra plan options beside them), "
            f"got {plan!r}"
        )
    options = {k: v for k, v in plan.items() if k not in ("bits", "ranks")}
    return [
        "--bits",
        expand_per_block(plan["bits"], f"{where}.bits"),
        "--ranks",
        expand_per_block(plan["ranks"], f"{where}.ranks"),
        *options_argv(options, "plan", where),
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
        made = folder / CELL_PLAN
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
