"""The screen leaves the knapsack plan only when the held-out windows clearly agree.

When the forward-only screen is the top rung (``qra search --steps 0``), the chosen plan is the
one with the lowest mean held-out loss. Three times on the GPU the screen chose a near-tie
neighbour of the knapsack plan, 0.0002 to 0.006 nats below it, and all three fine-tuned worse
than the knapsack plan (+1.1%, +2.1%, +0.8% PPL wiki in every seed; docs/ALLOCATION.md). On 64
selection windows two of those margins were about one standard error of the paired difference
(the windows disagree about such plans by as much as they differ), the third 2.2. So the
screen's best plan replaces the knapsack plan only when it is below it by more than ``errors``
standard errors, paired window by window (the same windows, both plans built as the screen
built them): a guard against choosing on noise, which the third pick passes.

The proxy rungs are left alone: a 20-step proxy's near-tie departure won once and lost once,
and the same rule would have got both wrong (docs/ALLOCATION.md "Eighth GPU run").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qradaptor.search.records import TrialRecord


@dataclass(frozen=True)
class Margin:
    """How far one plan's window losses lie below another's, paired window by window."""

    mean: float
    """Mean of (candidate - reference) over the windows, in nats (negative: candidate lower)."""
    stderr: float
    """Standard error of that mean (sample standard deviation / sqrt(windows)); nan for one window."""
    windows: int
    """Windows compared."""

    @property
    def errors(self) -> float:
        """Standard errors the candidate lies below the reference (negative: above); inf when
        every window agrees exactly on a non-zero gap."""
        if self.mean == 0:
            return 0.0
        if not self.stderr > 0:  # 0 or nan
            return math.inf if self.mean < 0 and self.stderr == 0 else 0.0
        return -self.mean / self.stderr


def paired_margin(candidate: Sequence[float], reference: Sequence[float]) -> Margin:
    """The candidate's window losses against the reference's, paired.

    Raises:
        ValueError: for window lists of different lengths or none.
    """
    if len(candidate) != len(reference) or not candidate:
        raise ValueError(
            f"paired_margin needs the same windows for both plans, got {len(candidate)} and {len(reference)}"
        )
    diffs = [c - r for c, r in zip(candidate, reference, strict=True)]
    mean = statistics.fmean(diffs)
    stderr = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return Margin(mean, stderr, len(diffs))


def settle_screen(
    chosen: TrialRecord,
    records: Sequence[TrialRecord],
    window_losses: Callable[[TrialRecord], Sequence[float]],
    errors: float,
) -> tuple[TrialRecord, str]:
    """The screen's final choice: ``chosen``, or the knapsack plan when ``chosen`` is not clearly below it.

    Args:
        chosen: the lowest-loss feasible record of the top rung (``choice.choose``).
        records: the top rung's records; the knapsack plan is the one of phase "knapsack".
        window_losses: the forward-only loss of each held-out window under a record's plan.
        errors: standard errors ``chosen`` must lie below the knapsack plan by; 0 keeps ``chosen``.

    Returns:
        The record to return and a note saying what was compared ("" when nothing was).
    """
    knapsack = next((r for r in records if r.phase == "knapsack"), None)
    if errors <= 0 or knapsack is None or chosen.plan_hash == knapsack.plan_hash:
        return chosen, ""
    margin = paired_margin(window_losses(chosen), window_losses(knapsack))
    said = (
        f"the screen's best plan ({chosen.plan_hash}) is {-margin.mean:.4f} ± {margin.stderr:.4f} nats "
        f"below the knapsack plan ({knapsack.plan_hash}) over {margin.windows} held-out windows, "
        f"{margin.errors:.1f} standard errors"
    )
    if margin.errors > errors:
        return chosen, f"{said}: chosen"
    return knapsack, f"{said}, not over {errors:g}: keeping the knapsack plan"
