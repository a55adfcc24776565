"""The record types of an experiment's summary: a number over seeds, a label's row, the whole.

Kept apart from ``report`` (which computes and writes them) so that ``plots`` can draw them
without importing the module that imports it; so is the one rule both apply to the rows'
devices (``trained_on_several``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qradaptor.experiment.cells import CellResult


@dataclass(frozen=True)
class Stat:
    """A number over seeds (or searches)."""

    mean: float | None
    """Mean of the values present; None when there are none."""
    std: float | None
    """Sample standard deviation (n - 1); None with fewer than two values."""
    n: int
    """How many values it is over."""


@dataclass(frozen=True)
class LabelRow:
    """One label's line of the tables."""

    label: str
    """The method's label."""
    method: str
    """Its ``qra train --method``."""
    budget: str | None
    """Its search budget, if any."""
    n_done: int
    """Seeds done."""
    n_planned: int
    """Seeds with a cell.json (done, failed or pending)."""
    stats: Mapping[str, Stat]
    """By key: avg_bits, avg_rank, each "task/metric", avg_acc, avg_acc_norm, tokens_per_s, peak_mib,
    predicted_peak_mib, train_seconds; and, over distinct searches, search_evaluations,
    search_seconds, search_epochs, search_pearson, search_avg_bits, search_loss, search_bits_early,
    search_bits_late (the chosen plan's mean bits over the first and second half of the blocks),
    search_gain (best proxy loss after the initial population minus the final best); per cell
    search_per_finetune (search proxy tokens over the cell's fine-tune tokens)."""
    tokens_per_s_ratio: float | None
    """Mean tokens/s over the reference label's mean tokens/s; None without a reference, or where
    the label's cells were not all trained on the one device the reference's were."""
    n_searches: int
    """Distinct searches among the done cells."""
    search_devices: tuple[str, ...] = ()
    """The devices (and dtypes) those searches ran on, sorted; empty where not recorded."""
    trained_on: tuple[str, ...] = ()
    """The devices the done cells were fine-tuned on (train.json), sorted; empty where not recorded."""


@dataclass(frozen=True)
class ExperimentSummary:
    """The rows of an experiment's tables and the cells they come from."""

    experiment: str
    """The experiment's name."""
    reference: str | None
    """The label tokens/s are compared with (None when absent)."""
    rows: tuple[LabelRow, ...]
    """One per label, in the order of the cells."""
    cells: tuple[CellResult, ...]
    """Every cell, done or not."""


def trained_on_several(rows: Sequence[LabelRow]) -> bool:
    """Whether the rows' done cells were fine-tuned on more than one device (train.json): then
    tokens/s compare only between rows of one, so the Efficiency table names each row's devices
    and efficiency.png colours its bars by them."""
    return len({device for row in rows for device in row.trained_on}) > 1
