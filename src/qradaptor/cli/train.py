"""``qra train``: fine-tune a plan (or a named baseline) into a run folder, resumably."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import shutil
import sys
from pathlib import Path
from typing import Any

from qradaptor.cli.common import check_device, check_output_dir, read_plan, resolve_device
from qradaptor.runfolder.train_run import RUN_CHECKPOINTS, RUN_TRAIN
from qradaptor.train.compiled import COMPILE_MODES, check_compile

DIVERGED = 3
"""Exit code when training stopped on a diverging loss."""
INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


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


def train(
    model: str | None = None,
    *,
    output: str,
    plan: str | None = None,
    method: str | None = None,
    rank: int = 16,
    bits: int = 4,
    adalora_init_r: int | None = None,
    adalora_target_r: int | None = None,
    data: str | None = None,
    text: bool = False,
    eval_data: str | None = None,
    eval_size: int = 200,
    limit: int | None = None,
    split: str = "train",
    epochs: float = 1.0,
    max_steps: int | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 2e-4,
    warmup: float = 0.03,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    seq_len: int = 512,
    lora_dropout: float = 0.05,
    gradient_checkpointing: bool = False,
    compile: str = "off",
    seed: int = 0,
    eval_every: int = 0,
    save_every: int = 0,
    keep_checkpoints: int = 2,
    resume: bool = False,
    force: bool = False,
    allow_collapse: bool = False,
    eval_tasks: str | None = None,
    eval_limit: int | None = None,
    device: str = "auto",
    max_memory: str | None = None,
    tensorboard: bool = False,
    no_progress: bool = False,
) -> int:
    """Fine-tune LoRA adapters on a base quantised per a plan (or a named baseline method).

    Writes a run folder: adapter/ (a standard PEFT adapter), plan.json, base.safetensors (the
    packed quantised base), train.json (settings, memory, tokens/s, loss curve), loss.csv and
    loss.png (with matplotlib), and with --tensorboard TensorBoard events in RUN/tensorboard.
    qra eval --run RUN evaluates exactly what was trained; qra export RUN writes a merged model.
    Checkpoints go to RUN/checkpoints every --save-every steps; --resume continues from the
    newest one to the same result as an uninterrupted run.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        output: the run folder
        plan: a plan JSON file (e.g. from qra search) or uniform:BITS:RANK; trains it with LoRA
            (or with --method dora, qdora, loftq, amq-lora)
        method: a named method: lora, lora16, qlora, qlora-4, qlora-3, qlora-2, qlora-nf4 (QLoRA:
            bitsandbytes NF4 with double quantisation), qlora-nf4-nodq (NF4 without it), adalora,
            amq-lora, dora, qdora, loftq, rank-linear-decay, rank-linear-growth, rank-attn-focus,
            rank-ffn-focus, rank-attn-focus-matched, rank-ffn-focus-matched, rank-gradient, embed8-body4
        rank: LoRA rank r of the named methods (their average rank)
        bits: bits b of the named uniform methods (qlora, adalora, qdora, loftq; 16: unquantised)
        adalora_init_r: adalora: every adapted module's rank before pruning (default 1.5 x the
            target)
        adalora_target_r: adalora: the average rank AdaLoRA prunes to (default --rank, or the mean
            adapted rank of --plan)
        data: Alpaca-style .json/.jsonl (instruction, input, output), a save_to_disk folder or a
            hub dataset; with --text, plain text; omitted: the embedded QA mix
        text: language-model fine-tuning on plain text (loss on every token)
        eval_data: held-out examples from here instead of a split of --data
        eval_size: examples of --data held out for evaluation (0: none)
        limit: train on the first N examples only
        split: dataset split of --data
        epochs: passes over the data (fractions allowed)
        max_steps: optimiser steps (overrides --epochs)
        batch_size: examples per micro-batch
        grad_accum: micro-batches per optimiser step
        lr: peak AdamW learning rate
        warmup: warm-up as a fraction of the steps (< 1) or a number of steps
        schedule: cosine, linear or constant after warm-up
        weight_decay: AdamW weight decay
        max_grad_norm: gradient-norm clip (0: off)
        seq_len: longest example in tokens
        lora_dropout: dropout on the adapter input
        gradient_checkpointing: recompute activations in the backward (less memory)
        compile: off (eager), default (torch.compile the forward, loss and backward) or graphs
            (the same replayed as CUDA graphs; CUDA only). Compiled, every micro-batch is padded
            to the longest example (at most --seq-len) so one graph serves every step; the first
            steps are slower while compiling (tens of seconds to minutes). It pays off for small
            models, whose steps are bound by kernel launches; "default" also runs on a CPU
        seed: seed of adapter init, dropout, data order and the held-out split
        eval_every: held-out loss every N steps (0: at the end only)
        save_every: checkpoint every N steps (0: none)
        keep_checkpoints: newest checkpoints kept
        resume: continue from the newest checkpoint in RUN/checkpoints
        force: train again in a folder that holds a finished or unfinished run
        allow_collapse: write the run even when training collapsed (its loss at or above ln(vocab),
            no better than a uniform guess, for 20 steps after warm-up, or at the end of a run of
            20 steps or more); without it such a run stops with exit code 3 and writes no adapter
        eval_tasks: after training, evaluate these tasks (as qra eval --tasks; perplexity windows of
            --seq-len tokens) into RUN/eval.json
        eval_limit: documents per task of --eval-tasks
        device: auto (cuda if available), cpu or cuda; bf16 on cuda, fp32 on cpu
        max_memory: refuse to start unless the predicted peak fits SIZE (e.g. 24GB, 24GiB,
            24000MB), checked from the model's config before any weight loads; gradient
            checkpointing is turned on when only that fits; on CUDA the process is capped at SIZE
        tensorboard: also log train and held-out loss as TensorBoard events in RUN/tensorboard,
            as training goes (needs the tensorboard package: pip install 'qradaptor[tensorboard]')
        no_progress: no progress output
    """
    from qradaptor.train.config import TrainConfig
    from qradaptor.train.methods import get_method

    if method is None and plan is None:
        raise ValueError("give --plan FILE (trained with LoRA) or --method NAME (a named baseline), or both")
    the_method = get_method(method or "lora")
    for flag, value in (("--adalora-init-r", adalora_init_r), ("--adalora-target-r", adalora_target_r)):
        if value is not None and the_method.adapter != "adalora":
            raise ValueError(f"{flag} is an option of --method adalora, not of {the_method.name!r}")
    check_device(device)
    from qradaptor.cli import max_memory as limits

    memory_cap = limits.parse(max_memory)  # bytes, None: no --max-memory
    config = TrainConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup=warmup,
        schedule=schedule,  # type: ignore[arg-type]
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        seq_len=seq_len,
        lora_dropout=lora_dropout,
        gradient_checkpointing=gradient_checkpointing,
        compile=compile,  # type: ignore[arg-type]
        seed=seed,
        eval_every=eval_every,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        allow_collapse=allow_collapse,
        progress=not no_progress,
    )
    if eval_size < 0:
        raise ValueError(f"--eval-size must be >= 0, got {eval_size}")
    for flag, given_data in (("--data", data), ("--eval-data", eval_data)):
        if not text and given_data is not None and Path(given_data).suffix.lower() == ".txt":
            raise ValueError(
                f"{flag} {given_data!r} is a .txt file, which holds plain text: add --text to fine-tune "
                "on it as text; instruction data is an Alpaca-style .json/.jsonl (instruction, input, output)"
            )
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'qradaptor[tensorboard]'")
    if eval_tasks is not None:
        from qradaptor.eval.suite import resolve_tasks

        resolve_tasks([t.strip() for t in eval_tasks.split(",") if t.strip()])
    given = read_plan(plan) if plan else None
    run = Path(output).expanduser()
    _check_run_folder(run, resume=resume, force=force)
    from qradaptor.lock import RunLock

    with RunLock(run, "qra train"):  # one writer per run folder: a second train is refused here
        _check_run_folder(run, resume=resume, force=force)  # again: the holder may just have finished
        from qradaptor.cli.train_output import evaluate_run, print_outcome
        from qradaptor.plan import Plan
        from qradaptor.train.loop import TrainingDiverged
        from qradaptor.train.outputs import write_run
        from qradaptor.train.run import DataSpec, train_plan

        if given is not None:
            from qradaptor.cli.common import load_structure

            structure = load_structure(model)[1]  # the config only: a plan that does not fit fails now
            given = Plan.uniform(structure.num_blocks, *given) if isinstance(given, tuple) else given
            given.validate(structure)
        _read_local_data(data, text, split)  # a damaged data file fails before the model loads
        if eval_data is not None:
            _read_local_data(eval_data, text, split)
        device = resolve_device(device)
        check_compile(config.compile, device)  # "graphs" on a CPU: refused before the model loads
        if memory_cap is not None:
            from qradaptor.cli.common import load_structure

            config = limits.check_train(
                memory_cap,
                load_structure(model)[1],
                the_method.name,
                config,
                given,
                rank=rank,
                bits=bits,
                adalora_init_r=adalora_init_r,
                adalora_target_r=adalora_target_r,
                device=device,
            )
        spec = DataSpec(
            source=data, text=text, eval_source=eval_data, eval_size=eval_size, limit=limit, split=split
        )
        checkpoints = run / RUN_CHECKPOINTS  # made by the first checkpoint; run/ by write_run
        if force and not resume:
            shutil.rmtree(checkpoints, ignore_errors=True)
        try:
            outcome = train_plan(
                model,
                the_method.name,
                config,
                spec,
                plan=given,
                rank=rank,
                bits=bits,
                device=device,
                checkpoints=checkpoints,
                resume=resume,
                adalora_init_r=adalora_init_r,
                adalora_target_r=adalora_target_r,
                tensorboard=run / "tensorboard" if tensorboard else None,
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
        write_run(run, outcome, device=device)
        if eval_tasks is not None:
            evaluate_run(outcome, run, eval_tasks, eval_limit, device, seq_len, not no_progress)
        print_outcome(outcome, run)
        return 0


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
    """Options of ``qra train``; those that are ``TrainConfig`` or ``DataSpec`` fields take the
    dataclass's default (one source of truth: tests/cli/test_train.py checks the verb's agree)."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("-o", "--output", required=True, metavar="RUN", help=helps["output"])
    parser.add_argument("--plan", metavar="FILE|uniform:BITS:RANK", help=helps["plan"])
    parser.add_argument("--method", metavar="NAME", help=helps["method"])
    parser.add_argument("--rank", type=int, default=16, help=helps["rank"])
    parser.add_argument("--bits", type=int, default=4, help=helps["bits"])
    parser.add_argument("--adalora-init-r", type=int, metavar="R", help=helps["adalora_init_r"])
    parser.add_argument("--adalora-target-r", type=int, metavar="R", help=helps["adalora_target_r"])
    parser.add_argument("--data", metavar="SOURCE", help=helps["data"])
    parser.add_argument("--text", action="store_true", help=helps["text"])
    parser.add_argument("--eval-data", metavar="SOURCE", help=helps["eval_data"])
    parser.add_argument("--eval-size", type=int, metavar="N", help=helps["eval_size"])
    parser.add_argument("--limit", type=int, metavar="N", help=helps["limit"])
    parser.add_argument("--split", help=helps["split"])
    parser.add_argument("--epochs", type=float, help=helps["epochs"])
    parser.add_argument("--max-steps", type=int, metavar="N", help=helps["max_steps"])
    parser.add_argument("--batch-size", type=int, metavar="B", help=helps["batch_size"])
    parser.add_argument("--grad-accum", type=int, metavar="A", help=helps["grad_accum"])
    parser.add_argument("--lr", type=float, help=helps["lr"])
    parser.add_argument("--warmup", type=float, help=helps["warmup"])
    parser.add_argument("--schedule", choices=("cosine", "linear", "constant"), help=helps["schedule"])
    parser.add_argument("--weight-decay", type=float, help=helps["weight_decay"])
    parser.add_argument("--max-grad-norm", type=float, help=helps["max_grad_norm"])
    parser.add_argument("--seq-len", type=int, metavar="T", help=helps["seq_len"])
    parser.add_argument("--lora-dropout", type=float, help=helps["lora_dropout"])
    parser.add_argument("--gradient-checkpointing", action="store_true", help=helps["gradient_checkpointing"])
    parser.add_argument("--compile", choices=COMPILE_MODES, help=helps["compile"])
    parser.add_argument("--seed", type=int, help=helps["seed"])
    parser.add_argument("--eval-every", type=int, metavar="N", help=helps["eval_every"])
    parser.add_argument("--save-every", type=int, metavar="N", help=helps["save_every"])
    parser.add_argument("--keep-checkpoints", type=int, metavar="N", help=helps["keep_checkpoints"])
    parser.add_argument("--resume", action="store_true", help=helps["resume"])
    parser.add_argument("--force", action="store_true", help=helps["force"])
    parser.add_argument("--allow-collapse", action="store_true", help=helps["allow_collapse"])
    parser.add_argument("--eval-tasks", metavar="TASKS", help=helps["eval_tasks"])
    parser.add_argument("--eval-limit", type=int, metavar="N", help=helps["eval_limit"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=helps["device"])
    parser.add_argument("--max-memory", metavar="SIZE", help=helps["max_memory"])
    parser.add_argument("--tensorboard", action="store_true", help=helps["tensorboard"])
    parameters = inspect.signature(train).parameters
    parser.set_defaults(**{k: v for k, v in field_defaults().items() if k in parameters})
