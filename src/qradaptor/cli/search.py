"""``qra search``: find per-block bits and ranks under a memory budget, into a run folder.

The options are ``recipes.search_options.SearchOptions``'s fields (their docstrings are the
help); the verb hands them to ``recipes.search.run``, which a benchmark or a runner can call
in-process with the same dataclass.
"""

from __future__ import annotations

import argparse

from qradaptor.cli.common import renamed_option
from qradaptor.cli.options import add_options
from qradaptor.recipes.search_options import (  # noqa: F401  (STRATEGIES, SEARCH_BITS_TEXT: the tests')
    PRESETS,
    SEARCH_BITS_TEXT,
    STRATEGIES,
    SearchOptions,
)

OPTIONS = SearchOptions
"""The verb's options: ``qra`` parses the command line into one."""
_METAVARS = {
    "budget": "3.5bits|1.2GB",
    "output": "DIR",
    "data": "SOURCE",
    "eval_data": "SOURCE",
    **{name: "N" for name in (*PRESETS["full"], "eta", "population", "generations", "group_size", "seed")},
    **{name: "N" for name in ("offspring", "bayes_batch", "workers")},
    "gpus": "0,1",
    "storage": "URL",
    "study": "NAME",
    "max_memory": "SIZE",
    "sensitivity": "FILE",
    "fixed_bits": "B",
    "fixed_rank": "R",
    "screen_margin": "E",
}


def search(options: SearchOptions) -> int:
    """Search per-block bits and LoRA ranks under a memory budget (QR-Adaptor).

    Profiles each block's sensitivity (KL, Eq. 6). The default strategy, halving, starts from
    the exact knapsack allocation over that profile and its neighbours (layer-wise crossover,
    proximity mutation), scores them all forward only, then promotes the best third through
    proxy fine-tunes of rising length (the knapsack plan always reaches the top, so the choice
    is never worse than it there); --strategy paper evolves plans with NSGA-II, every plan
    scored by a proxy fine-tune, as the paper does. Both refine near the Pareto front with a
    Matérn-5/2 Gaussian process and Expected Improvement, and write a run folder:
    plan.json (the chosen plan, for qra eval --plan), trials.csv, pareto.json, summary.json,
    sensitivity.json/csv, the Optuna study (study.db) and plots. Running the same command
    again resumes the search: finished trials are read from study.db, never repeated.

    With --workers N, N local `qra worker` processes score the plans (several per GPU for
    small models, spread over --gpus); with --storage, any `qra worker --storage URL --study
    NAME` on other machines joins in. A generation's children and a Bayes round's picks
    are scored together, so their counts (--offspring, --bayes-batch) follow --workers
    unless given; the same counts give the same search with any number of workers.
    """
    from qradaptor.recipes import search as recipe

    return recipe.run(options)


VERB = search


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra search``, from ``SearchOptions``; a preset-sized option (None: the
    --preset's value) names both presets' sizes in its help."""
    quick, full = PRESETS["quick"], PRESETS["full"]
    sizes = {name: f"(quick/full: {quick[name]}/{full[name]})" for name in full}
    add_options(
        parser,
        SearchOptions,
        positional=("model",),
        short={"output": "-o"},
        metavars=_METAVARS,
        help_suffix=sizes,
    )
    renamed_option(parser, "--method", "--quant-method")
