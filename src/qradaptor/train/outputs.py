"""Writes the run folder a finished training leaves, each part atomically.

The folder's layout and its record, train.json (``TrainRecord``), belong to
``runfolder/train_run.py``. Nothing is written until training has finished; the adapter
folder is written next to its final place and renamed over it, so a crash never leaves a
half-written adapter. While the parts are written, ``RUN/.incomplete`` says so; train.json is
written last and the marker removed after it, so a run folder is complete exactly when it has
train.json and no marker (``runs.read_run`` refuses one that is not).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.atomic import atomic_dir, write_text
from qradaptor.runfolder.train_run import (
    LOSS_CSV,
    LOSS_PNG,
    RUN_ADAPTER,
    RUN_BASE,
    RUN_INCOMPLETE,
    RUN_PLAN,
    RUN_TRAIN,
    TrainRecord,
)

if TYPE_CHECKING:
    from qradaptor.train.run import TrainOutcome


def _device_name(device: str) -> str:
    """What the results were measured on: the GPU's name, or the CPU's."""
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def summary(outcome: TrainOutcome, device: str) -> TrainRecord:
    """train.json's record: what was trained, how, and what it measured."""
    import peft
    import torch
    import transformers

    from qradaptor.models.provenance import read_provenance

    result = outcome.result
    evals = result.evals
    return TrainRecord(
        method=outcome.method.name,
        method_summary=outcome.method.summary,
        model=outcome.source,
        plan_name=outcome.plan.name,
        plan_hash=outcome.plan.plan_hash,
        config=outcome.config.to_dict(),
        fingerprint=outcome.fingerprint,
        memory=outcome.memory,
        steps=result.steps,
        resumed_from=result.resumed_from,
        tokens=result.tokens,
        train_seconds=round(result.train_seconds, 3),
        tokens_per_second=round(result.tokens_per_second, 1),
        steady_tokens_per_second=round(result.steady_tokens_per_second(), 1),
        step_seconds=tuple(round(x, 5) for x in result.step_seconds),
        final_train_loss=result.losses[-1] if result.losses else None,
        final_eval_loss=evals[-1][1] if evals else None,
        evals=tuple(evals),
        losses=tuple(result.losses),
        skipped_steps=tuple(result.skipped_steps),
        device=device,
        device_name=_device_name(device),
        date=time.strftime("%Y-%m-%d"),
        versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        provenance=read_provenance(outcome.source).to_dict(),  # what the "16-bit" base really is
    )


def loss_csv(outcome: TrainOutcome) -> str:
    """step,train_loss,eval_loss (eval empty where none was taken)."""
    evals = dict(outcome.result.evals)
    lines = ["step,train_loss,eval_loss"]
    for step, loss in enumerate(outcome.result.losses, start=1):
        held = evals.get(step)
        lines.append(f"{step},{loss:.6f},{'' if held is None else f'{held:.6f}'}")
    return "\n".join(lines) + "\n"


def write_run(run: Path, outcome: TrainOutcome, *, device: str) -> None:
    """Writes the finished run's adapter, plan, packed base, train.json and loss.csv into ``run``."""
    from qradaptor.packed import quantized_modules, save_packed_base

    run.mkdir(parents=True, exist_ok=True)
    write_text(run / RUN_INCOMPLETE, "qra train was writing this run folder; train.json is written last\n")
    (run / RUN_TRAIN).unlink(missing_ok=True)  # a --force over a finished run: not complete until rewritten
    with atomic_dir(run / RUN_ADAPTER) as folder:
        outcome.model.save_pretrained(str(folder))
    write_text(run / RUN_PLAN, outcome.plan.to_json() + "\n")
    if quantized_modules(outcome.model):  # our packed layers (an NF4 base is re-made by bitsandbytes)
        save_packed_base(
            outcome.model,
            outcome.structure,
            outcome.plan,
            run / RUN_BASE,
            model_fingerprint=str(outcome.fingerprint.get("weights", "")),
        )
    write_text(run / LOSS_CSV, loss_csv(outcome))
    from qradaptor.plotting import can_plot

    if can_plot() and outcome.result.losses:
        plot_loss(outcome.result.losses, outcome.result.evals, run / LOSS_PNG, title=outcome.method.name)
    summary(outcome, device).save(run)  # train.json, the last part
    (run / RUN_INCOMPLETE).unlink()


def plot_loss(losses: list[float], evals: list[tuple[int, float]], path: Path, *, title: str = "") -> None:
    """Train loss per step and held-out loss at each evaluation, in nats per token."""
    from qradaptor.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=1, label="train")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
