"""TrainConfig: every setting of a fine-tuning run, one frozen record.

A checkpoint stores it; a resume with a config that differs in anything that changes the
result (all fields but the bookkeeping ones in ``RESUMABLE_CHANGES``) is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from qradaptor.schedule import SCHEDULES, Schedule
from qradaptor.train.compiled import CompileMode, check_compile

RESUMABLE_CHANGES = frozenset(
    {"eval_every", "save_every", "keep_checkpoints", "progress", "collapse_steps", "allow_collapse"}
)
"""Fields a resume may change: they decide when things are reported, saved or stopped, not the result."""


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(value: object, name: str, *, low: float, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (low_open and value == low):  # type: ignore[operator]
        rule = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a plan's adapters are fine-tuned: optimiser, schedule, batching and bookkeeping."""

    epochs: float = 1.0
    """Passes over the training examples (fractions allowed); ignored when ``max_steps`` is set."""
    max_steps: int | None = None
    """Optimiser steps to take; None: as many as ``epochs`` needs."""
    batch_size: int = 8
    """Examples per micro-batch (one forward/backward)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step: the effective batch is batch_size x grad_accum."""
    lr: float = 2e-4
    """Peak AdamW learning rate."""
    warmup: float = 0.03
    """Warm-up: a fraction of the steps when < 1, else a number of steps."""
    schedule: Schedule = "cosine"
    """Decay after warm-up: cosine, linear (both towards 0) or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay of the adapters."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 turns clipping off)."""
    seq_len: int = 512
    """Longest example in tokens (instructions are cut, text is packed to this length)."""
    lora_dropout: float = 0.05
    """Dropout on the adapter input."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward: less memory, ~30% more time."""
    checkpoint_blocks: int | None = None
    """With gradient_checkpointing: how many blocks, from the first, recompute (None: every one).
    ``qra train --max-memory`` takes the fewest that fit: a smaller base recomputes less."""
    compile: CompileMode = "off"
    """off (eager), default (torch.compile) or graphs (torch.compile + CUDA graphs, CUDA only);
    compiled, every micro-batch is padded to one shape (see compiled.py)."""
    seed: int = 0
    """Seeds adapter initialisation, dropout and the data order."""
    eval_every: int = 0
    """Held-out evaluation every this many steps (0: only at the end)."""
    save_every: int = 0
    """Checkpoint every this many steps (0: no intermediate checkpoints)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted once a newer one is complete."""
    divergence_factor: float = 4.0
    """Stop when a step's loss exceeds this multiple of the lowest smoothed loss so far."""
    collapse_steps: int = 20
    """Stop as collapsed when the training loss stays at or above ln(vocab), no better than a
    uniform guess, this many steps in a row after warm-up (0: never); in a run of at least
    this many steps, a final held-out loss at or above ln(vocab) is a collapse too."""
    allow_collapse: bool = False
    """Write the run even when it collapsed (the collapse is still reported)."""
    progress: bool = True
    """Show a progress bar (loss, tokens/s, ETA)."""

    def __post_init__(self) -> None:
        _check_number(self.epochs, "epochs", low=0.0, low_open=True)
        if self.max_steps is not None:
            _check_int(self.max_steps, "max_steps", 1)
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.grad_accum, "grad_accum", 1)
        _check_number(self.lr, "lr", low=0.0, low_open=True)
        _check_number(self.warmup, "warmup", low=0.0)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check_number(self.weight_decay, "weight_decay", low=0.0)
        _check_number(self.max_grad_norm, "max_grad_norm", low=0.0)
        _check_int(self.seq_len, "seq_len", 2)
        if not isinstance(self.lora_dropout, int | float) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.checkpoint_blocks is not None:
            _check_int(self.checkpoint_blocks, "checkpoint_blocks", 1)
        check_compile(self.compile)
        _check_int(self.seed, "seed", 0)
        _check_int(self.eval_every, "eval_every", 0)
        _check_int(self.save_every, "save_every", 0)
        _check_int(self.keep_checkpoints, "keep_checkpoints", 1)
        _check_number(self.divergence_factor, "divergence_factor", low=1.0, low_open=True)
        _check_int(self.collapse_steps, "collapse_steps", 0)

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimiser steps of the run, given micro-batches per epoch (at least 1)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * batches_per_epoch / self.grad_accum))

    def warmup_steps(self, total: int) -> int:
        """Warm-up in steps: ``warmup`` x total when it is a fraction, else ``warmup``."""
        return round(self.warmup * total) if self.warmup < 1 else min(int(self.warmup), total)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of ``to_dict``; unknown keys are an error.

        Raises:
            ValueError: on an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config has unknown field(s) {unknown}; known are {sorted(known)}")
        return cls(**data)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ from ``other`` and would change the result, as 'name: a != b'."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{name}: {theirs[name]!r} != {mine[name]!r}"
            for name in mine
            if name not in RESUMABLE_CHANGES and mine[name] != theirs[name]
        ]
