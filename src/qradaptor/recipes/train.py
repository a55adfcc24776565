"""``qra train`` as a library call: ``run(TrainOptions(...))`` checks every option before the
model loads, holds the run folder, trains (resumably) and writes the folder.

``qra train`` parses its command line into ``TrainOptions`` and calls ``run``; a benchmark or a
runner calls it in-process with the same dataclass.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.recipes.inputs import check_device, check_output_dir, read_plan, resolve_device
from qradaptor.recipes.train_options import TrainOptions
from qradaptor.runfolder.train_run import RUN_CHECKPOINTS, RUN_TRAIN
from qradaptor.train.compiled import check_compile

if TYPE_CHECKING:
    from qradaptor.train.config import TrainConfig

DIVERGED = 3
"""Exit code when training stopped on a diverging loss."""
INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


def run(options: TrainOptions) -> int:
    """Trains what ``options`` describe into its run folder (resuming it with ``resume``).

    Args:
        options: the run, as ``qra train``'s command line gives it.

    Returns:
        0; ``DIVERGED`` (3) when the loss diverged; ``INTERRUPTED`` (130) after Ctrl-C, with
        the newest checkpoint kept for ``resume``.

    Raises:
        ValueError: for any option that is wrong, before the model loads; also when another
            ``qra train`` holds the folder.
    """
    from qradaptor.lock import RunLock
    from qradaptor.recipes import max_memory as limits
    from qradaptor.train.methods import get_method

    o = options
    if o.method is None and o.plan is None:
        raise ValueError("give --plan FILE (trained with LoRA) or --method NAME (a named baseline), or both")
    the_method = get_method(o.method or "lora")
    for flag, value in (("--adalora-init-r", o.adalora_init_r), ("--adalora-target-r", o.adalora_target_r)):
        if value is not None and the_method.adapter != "adalora":
            raise ValueError(f"{flag} is an option of --method adalora, not of {the_method.name!r}")
    check_device(o.device)
    memory_cap = limits.parse(o.max_memory)  # bytes, None: no --max-memory
    config = train_config(o)
    _check_data_and_extras(o)
    given = read_plan(o.plan) if o.plan else None
    run_dir = Path(o.output).expanduser()
    _check_run_folder(run_dir, resume=o.resume, force=o.force)

    with RunLock(run_dir, "qra train"):  # one writer per run folder: a second train is refused here
        _check_run_folder(run_dir, resume=o.resume, force=o.force)  # again: the holder may just have finished
        from qradaptor.plan import Plan
        from qradaptor.recipes.inputs import load_structure
        from qradaptor.recipes.train_output import evaluate_run, print_outcome
        from qradaptor.train.loop import TrainingDiverged
        from qradaptor.train.outputs import write_run
        from qradaptor.train.run import DataSpec, train_plan

        if given is not None:
            structure = load_structure(o.model)[1]  # the config only: a plan that does not fit fails now
            given = Plan.uniform(structure.num_blocks, *given) if isinstance(given, tuple) else given
            given.validate(structure)
        _read_local_data(o.data, o.text, o.split)  # a damaged data file fails before the model loads
        if o.eval_data is not None:
            _read_local_data(o.eval_data, o.text, o.split)
        device = resolve_device(o.device)
        check_compile(config.compile, device)  # "graphs" on a CPU: refused before the model loads
        if memory_cap is not None:
            config = limits.check_train(
                memory_cap,
                load_structure(o.model)[1],
                the_method.name,
                config,
                given,
                rank=o.rank,
                bits=o.bits,
                adalora_init_r=o.adalora_init_r,
                adalora_target_r=o.adalora_target_r,
                device=device,
            )
        spec = DataSpec(
            source=o.data,
            text=o.text,
            eval_source=o.eval_data,
            eval_size=o.eval_size,
            limit=o.limit,
            split=o.split,
        )
        checkpoints = run_dir / RUN_CHECKPOINTS  # made by the first checkpoint; run_dir by write_run
        if o.force and not o.resume:
            shutil.rmtree(checkpoints, ignore_errors=True)
        try:
            outcome = train_plan(
                o.model,
                the_method.name,
                config,
                spec,
                plan=given,
                rank=o.rank,
                bits=o.bits,
                device=device,
                checkpoints=checkpoints,
                resume=o.resume,
                adalora_init_r=o.adalora_init_r,
                adalora_target_r=o.adalora_target_r,
                tensorboard=run_dir / "tensorboard" if o.tensorboard else None,
            )
        except TrainingDiverged as err:
            print(f"qra train: error: {err}", file=sys.stderr)
            return DIVERGED
        except KeyboardInterrupt:
            from qradaptor.train.checkpoint import complete_checkpoints

            found = complete_checkpoints(checkpoints)
            where = f"the newest checkpoint is {found[-1].name}" if found else "no checkpoint was written"
            print(
                f"qra train: interrupted; {where}; run the same command with --resume to continue",
                file=sys.stderr,
            )
            return INTERRUPTED
        write_run(run_dir, outcome, device=device)
        if o.eval_tasks is not None:
            evaluate_run(outcome, run_dir, o.eval_tasks, o.eval_limit, device, o.seq_len, not o.no_progress)
        print_outcome(outcome, run_dir)
        return 0


def train_config(o: TrainOptions) -> TrainConfig:
    """The library's ``TrainConfig`` of ``o`` (it checks every number, naming the field)."""
    from qradaptor.train.config import TrainConfig

    return TrainConfig(
        epochs=o.epochs,
        max_steps=o.max_steps,
        batch_size=o.batch_size,
        grad_accum=o.grad_accum,
        lr=o.lr,
        warmup=o.warmup,
        schedule=o.schedule,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        seq_len=o.seq_len,
        lora_dropout=o.lora_dropout,
        gradient_checkpointing=o.gradient_checkpointing,
        compile=o.compile,
        seed=o.seed,
        eval_every=o.eval_every,
        save_every=o.save_every,
        keep_checkpoints=o.keep_checkpoints,
        allow_collapse=o.allow_collapse,
        progress=not o.no_progress,
    )


def _check_data_and_extras(o: TrainOptions) -> None:
    """--eval-size, a .txt without --text, --tensorboard's package and --eval-tasks' names:
    each refused before anything loads."""
    if o.eval_size < 0:
        raise ValueError(f"--eval-size must be >= 0, got {o.eval_size}")
    for flag, given_data in (("--data", o.data), ("--eval-data", o.eval_data)):
        if not o.text and given_data is not None and Path(given_data).suffix.lower() == ".txt":
            raise ValueError(
                f"{flag} {given_data!r} is a .txt file, which holds plain text: add --text to fine-tune "
                "on it as text; instruction data is an Alpaca-style .json/.jsonl (instruction, input, output)"
            )
    if o.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'qradaptor[tensorboard]'")
    if o.eval_tasks is not None:
        from qradaptor.eval.suite import resolve_tasks

        resolve_tasks([t.strip() for t in o.eval_tasks.split(",") if t.strip()])


def _check_run_folder(run: Path, *, resume: bool, force: bool) -> None:
    from qradaptor.train.checkpoint import complete_checkpoints

    if run.exists() and not run.is_dir():
        raise ValueError(f"--output {str(run)!r} is a file; give a folder for the run")
    check_output_dir(run)  # writable: checked before the model loads
    finished = (run / RUN_TRAIN).is_file()
    pending = complete_checkpoints(run / RUN_CHECKPOINTS)
    if finished and not force and not resume:
        raise ValueError(
            f"--output {str(run)!r} already holds a finished run; pass --force to train again there "
            "(the old adapter is replaced only once the new run has finished)"
        )
    if pending and not resume and not force:
        raise ValueError(
            f"--output {str(run)!r} holds checkpoints of an unfinished run (newest {pending[-1].name}); "
            "pass --resume to continue it or --force to start over"
        )


def _read_local_data(source: str | None, text: bool, split: str) -> None:
    """Reads a local data file once, so that a damaged one is refused before the model loads."""
    from qradaptor.data.loading import load_instructions, load_texts

    if source is not None and Path(source).expanduser().is_file():
        (load_texts if text else load_instructions)(source, split=split)
