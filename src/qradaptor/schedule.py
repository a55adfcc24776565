"""The learning-rate schedule shared by proxy tuning and full fine-tuning.

Linear warm-up, then cosine, linear or constant; a multiplier of the peak lr for
``torch.optim.lr_scheduler.LambdaLR``. One definition, so a proxy run and a full run of
the same length follow the same curve.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def lr_factor(step: int, steps: int, warmup: int, schedule: Schedule) -> float:
    """Multiplier of the peak lr at 0-based ``step``.

    Warm-up is (step + 1) / (warmup + 1), so the first step already learns; after it
    progress p = (step - warmup) / (steps - warmup) in [0, 1) gives
    cosine 0.5 (1 + cos(pi p)), linear 1 - p, constant 1. No step gets a zero lr.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress
