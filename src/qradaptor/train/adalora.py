"""AdaLoRA's ranks for a run: the defaults from the plan, the checks, and what it kept.

AdaLoRA (Zhang et al., 2023) starts every adapted module at ``init_r`` and prunes the
singular values during training to an average of ``target_r`` per adapted module. On any
plan (any bits, e.g. a searched mixed-precision one) the plan says which modules are
adapted; by default the target is the plan's mean adapted rank and init 1.5 x the target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from qradaptor.plan import Plan
    from qradaptor.runfolder.train_run import AdaloraRanks

ADALORA_INIT_FACTOR = 1.5
"""AdaLoRA starts every module at 1.5x the target average rank and prunes down to it."""


def mean_adapted_rank(plan: Plan) -> float:
    """Mean rank over the plan's adapted entries (rank > 0); 0 when it adapts nothing.

    Every block has the same linears, so for a block plan this is the mean over modules too.
    """
    ranks = [s.rank for s in plan.layers.values() if s.rank]
    return sum(ranks) / len(ranks) if ranks else 0.0


def adalora_ranks(
    default_target: float, init_r: int | None = None, target_r: int | None = None
) -> tuple[int, int]:
    """(init_r, target_r) of AdaLoRA: the given ones, else target = the plan's mean adapted rank
    (``default_target``, rounded) and init = 1.5 x target (AdaLoRA's paper starts above the target
    and prunes down to it).

    Raises:
        ValueError: a given rank that is not an integer >= 1, a target above the initial rank,
            or a plan that adapts nothing.
    """
    for name, value in (("adalora_init_r", init_r), ("adalora_target_r", target_r)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if target_r is None:
        if default_target <= 0:
            raise ValueError("adalora needs a plan that adapts some module (a rank > 0), got none")
        target_r = max(1, round(default_target))
    if init_r is None:
        init_r = max(target_r, round(ADALORA_INIT_FACTOR * target_r))
    if target_r > init_r:
        raise ValueError(
            f"adalora_target_r ({target_r}) must be <= adalora_init_r ({init_r}): AdaLoRA prunes "
            "from the initial rank down to the target average"
        )
    return init_r, target_r


def adalora_memory(
    model: nn.Module, adalora: tuple[int, int], *, num_linears: int
) -> tuple[float, AdaloraRanks]:
    """train.json's avg_rank of an AdaLoRA model (the ranks it keeps, over ``num_linears`` block
    linears, unadapted ones at 0) and its "adalora" record."""
    from qradaptor.lora import adalora_kept_ranks
    from qradaptor.runfolder.train_run import AdaloraRanks

    kept = adalora_kept_ranks(model)
    ranks = AdaloraRanks(
        init_r=adalora[0],
        target_r=adalora[1],
        kept_avg_rank=sum(kept.values()) / len(kept) if kept else 0.0,
        kept_ranks=kept,
    )
    return sum(kept.values()) / num_linears, ranks
