"""``qra train``: fine-tune a plan (or a named baseline) into a run folder, resumably.

The options are ``recipes.train_options.TrainOptions``'s fields (their docstrings are the
help, their defaults ``TrainConfig``'s and ``DataSpec``'s); the verb hands them to
``recipes.train.run``, which a benchmark or a runner can call in-process.
"""

from __future__ import annotations

import argparse
from typing import Any

from qradaptor.cli.options import add_options
from qradaptor.recipes.train_options import TrainOptions

OPTIONS = TrainOptions
"""The verb's options: ``qra`` parses the command line into one."""
_METAVARS = {
    "output": "RUN",
    "plan": "FILE|uniform:BITS:RANK",
    "method": "NAME",
    "adalora_init_r": "R",
    "adalora_target_r": "R",
    "data": "SOURCE",
    "eval_data": "SOURCE",
    "batch_size": "B",
    "grad_accum": "A",
    "seq_len": "T",
    "eval_tasks": "TASKS",
    "max_memory": "SIZE",
    **{name: "N" for name in ("eval_size", "limit", "max_steps", "eval_every", "save_every")},
    **{name: "N" for name in ("keep_checkpoints", "eval_limit")},
}


def train(options: TrainOptions) -> int:
    """Fine-tune LoRA adapters on a base quantised per a plan (or a named baseline method).

    Writes a run folder: adapter/ (a standard PEFT adapter), plan.json, base.safetensors (the
    packed quantised base), train.json (settings, memory, tokens/s, loss curve), loss.csv and
    loss.png (with matplotlib), and with --tensorboard TensorBoard events in RUN/tensorboard.
    qra eval --run RUN evaluates exactly what was trained; qra export RUN writes a merged model.
    Checkpoints go to RUN/checkpoints every --save-every steps; --resume continues from the
    newest one to the same result as an uninterrupted run.
    """
    from qradaptor.recipes import train as recipe

    return recipe.run(options)


VERB = train


def field_defaults() -> dict[str, Any]:
    """The defaults of ``TrainConfig``'s and ``DataSpec``'s fields, under the verb's option names
    (DataSpec's ``source`` and ``eval_source`` are --data and --eval-data)."""
    from dataclasses import MISSING, fields

    from qradaptor.train.config import TrainConfig
    from qradaptor.train.run import DataSpec

    options = {"source": "data", "eval_source": "eval_data"}
    return {
        options.get(f.name, f.name): f.default
        for spec in (TrainConfig, DataSpec)
        for f in fields(spec)
        if f.default is not MISSING
    }


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra train``, from ``TrainOptions`` (whose ``TrainConfig`` and ``DataSpec``
    fields take those dataclasses' defaults: tests/cli/test_train.py checks they agree)."""
    add_options(parser, TrainOptions, positional=("model",), short={"output": "-o"}, metavars=_METAVARS)
