"""The run folder a finished training writes, each part atomically.

    RUN/adapter/            standard PEFT adapter (adapter_config.json + adapter_model.safetensors;
                            mixed ranks via rank_pattern)
    RUN/plan.json           the plan trained (qra eval --plan, qra memory --plan)
    RUN/base.safetensors    the packed quantised base, so that a reload needs no re-fit
                            (qradaptor backend with quantised modules only)
    RUN/train.json          method, settings, fingerprint, memory, throughput, loss curve, evals
    RUN/loss.csv            step, train loss, held-out loss

Nothing is written until training has finished; the adapter folder is written next to its
final place and renamed over it, so a crash never leaves a half-written adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qradaptor.train.run import TrainOutcome

RUN_FILES = ("adapter", "plan.json", "train.json", "loss.csv")
"""What every finished run folder holds (base.safetensors only when the base is packed)."""


def _write_text(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _replace_dir(build: Path, final: Path) -> None:
    """Puts the finished folder ``build`` at ``final``, replacing an older one only once complete."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(build, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summary(outcome: TrainOutcome, device: str) -> dict[str, Any]:
    """train.json's content: what was trained, how, and what it measured."""
    import peft
    import torch
    import transformers

    result = outcome.result
    evals = result.evals
    return {
        "method": outcome.method.name,
        "method_summary": outcome.method.summary,
        "model": outcome.source,
        "plan_name": outcome.plan.name,
        "plan_hash": outcome.plan.plan_hash,
        "config": outcome.config.to_dict(),
        "fingerprint": outcome.fingerprint,
        "memory": outcome.memory,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "tokens": result.tokens,
        "train_seconds": round(result.train_seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "steady_tokens_per_second": round(result.steady_tokens_per_second(), 1),
        "step_seconds": [round(x, 5) for x in result.step_seconds],
        "final_train_loss": result.losses[-1] if result.losses else None,
        "final_eval_loss": evals[-1][1] if evals else None,
        "evals": [list(e) for e in evals],
        "losses": result.losses,
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "note": "the embedded SmolLM2 weights are Q4_1 in the GGUF: its 16-bit base is them dequantised",
    }


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
    run.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".adapter.", dir=run))
    try:
        outcome.model.save_pretrained(str(build))
        _replace_dir(build, run / "adapter")
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _write_text(run / "plan.json", outcome.plan.to_json() + "\n")
    if outcome.method.backend == "qradaptor" and _has_packed(outcome):
        from qradaptor.packed import save_packed_base

        save_packed_base(
            outcome.model,
            outcome.structure,
            outcome.plan,
            run / "base.safetensors",
            model_fingerprint=str(outcome.fingerprint.get("weights", "")),
        )
    _write_text(run / "train.json", json.dumps(summary(outcome, device), indent=1) + "\n")
    _write_text(run / "loss.csv", loss_csv(outcome))


def _has_packed(outcome: TrainOutcome) -> bool:
    from qradaptor.plan import UNQUANTIZED

    plan = outcome.plan
    return (
        any(spec.bits != UNQUANTIZED for spec in plan.layers.values())
        or plan.embed_bits != UNQUANTIZED
        or plan.head_bits != UNQUANTIZED
    )
