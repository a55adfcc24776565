"""What ``qra train`` does once training has finished and the run folder is written: the
evaluation of ``--eval-tasks`` into RUN/eval.json and the printed summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.recipes.inputs import write_text_atomic
from qradaptor.runfolder.train_run import RUN_ADAPTER, RUN_BASE, RUN_PLAN, RUN_TRAIN

if TYPE_CHECKING:
    from qradaptor.train.run import TrainOutcome


def evaluate_run(
    outcome: TrainOutcome, run: Path, tasks: str, limit: int | None, device: str, seq_len: int, progress: bool
) -> None:
    """``--eval-tasks``: scores the trained model (still in memory) into RUN/eval.json, as
    ``qra eval --run`` would, and prints the table."""
    from qradaptor.eval.results import format_table, to_json
    from qradaptor.eval.suite import resolve_tasks, run_suite, zero_shot_average
    from qradaptor.models.provenance import read_provenance

    names = resolve_tasks([t.strip() for t in tasks.split(",") if t.strip()])
    records = run_suite(
        outcome.model,
        outcome.tokenizer,
        names,
        model_name=outcome.source,
        plan_hash=outcome.plan.plan_hash,
        adapter=str(run / RUN_ADAPTER),
        limit=limit,
        seq_len=seq_len,
        progress=progress,
    )
    meta = {
        "run": str(run),
        "tasks": names,
        "limit": limit,
        "device": device,
        "zero_shot_avg_acc": zero_shot_average(records, "acc"),
        "provenance": read_provenance(outcome.source).to_dict(),
    }
    write_text_atomic(run / "eval.json", to_json(records, meta) + "\n", force=True)
    print(format_table(records))


def print_outcome(outcome: TrainOutcome, run: Path) -> None:
    """The run in two lines: steps, losses, speed, bits and ranks, memory; the files written."""
    from qradaptor.train.outputs import LOSS_CSV

    memory = outcome.memory
    result = outcome.result
    measured = memory.measured_peak
    peak = f"{measured / 2**20:,.1f} MiB measured, " if measured else ""
    print(
        f"{outcome.method.name}: {result.steps} steps, final train loss {result.losses[-1]:.4f}"
        + (f", held-out loss {result.evals[-1][1]:.4f}" if result.evals else "")
        + f"; {result.tokens_per_second:,.0f} tokens/s; avg bits {memory.avg_bits:.2f}, avg rank "
        f"{memory.avg_rank:.1f}{' (kept after pruning)' if memory.adalora else ''}, "
        f"{memory.trainable_params:,} trainable; peak {peak}"
        f"{(memory.predicted_peak or 0) / 2**20:,.1f} MiB predicted"
    )
    print(
        f"wrote {run}/{RUN_ADAPTER}, {RUN_PLAN}, {RUN_TRAIN}, {LOSS_CSV}"
        + (f", {RUN_BASE}" if (run / RUN_BASE).exists() else "")
    )
