"""What a search leaves behind: one record per proxy evaluation, in plain data.

A ``TrialRecord`` is the flat, JSON-able view of one evaluated plan: which phase proposed
it, its per-unit (bits, rank), its proxy scores, its memory and its cost. The study storage
(``study``), the run directory and the plots (``report``) all speak this type, so none of
them needs Optuna or a model to read a finished search.

Phases, in the order a search runs them:
    reference   uniform plans scored for comparison (not part of the population)
    initial     the sensitivity-biased first population (§3.3; the paper strategy)
    nsga2       offspring of the NSGA-II generations (§3.4; the paper strategy)
    knapsack    the exact allocator's plan at the budget (the halving strategy, every rung)
    screen      a candidate scored forward only (rung 0 of the halving strategy)
    halving     a candidate promoted to a proxy rung (the halving strategy)
    bayes       plans chosen by the Gaussian-process refinement (§3.5)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from qradaptor.search.space import SearchSpace

PHASES: tuple[str, ...] = ("reference", "initial", "nsga2", "knapsack", "screen", "halving", "bayes")
"""Every phase a trial can come from, in search order."""
SEARCH_PHASES: tuple[str, ...] = ("initial", "nsga2", "knapsack", "screen", "halving", "bayes")
"""The phases that propose plans for the search itself (references only compare)."""


@dataclass(frozen=True)
class TrialRecord:
    """One proxy evaluation of one plan."""

    number: int
    """0-based order of evaluation within the study."""
    phase: str
    """One of ``PHASES``."""
    generation: int
    """0 for references and the initial population, g for NSGA-II generation g, i for Bayes step i."""
    plan_hash: str
    """``Plan.plan_hash`` of the evaluated plan."""
    bits: tuple[int, ...]
    """Bits per search unit (block, or module at module granularity), in unit order."""
    ranks: tuple[int, ...]
    """LoRA rank per search unit."""
    loss: float
    """Proxy loss after the short fine-tune (minimised); inf when it diverged."""
    loss_before: float
    """Held-out loss of the quantised model before tuning; inf when non-finite."""
    bytes: int
    """Total model bytes of the plan (the memory objective, Eq. 5)."""
    avg_bits: float
    """Average stored bits per block-linear weight, scales and zeros included."""
    seconds: float
    """Wall time of the proxy evaluation."""
    name: str = ""
    """A label, e.g. "uniform-4bit-r16" for a reference."""
    tokens: int = 0
    """Input tokens the proxy fine-tune trained on (the search's cost in training data)."""

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if len(self.bits) != len(self.ranks):
            raise ValueError(
                f"bits and ranks must have equal length, got {len(self.bits)} and {len(self.ranks)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; non-finite losses become None (JSON has no inf)."""
        data = asdict(self)
        data["bits"], data["ranks"] = list(self.bits), list(self.ranks)
        for key in ("loss", "loss_before"):
            if not math.isfinite(data[key]):
                data[key] = None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        """Inverse of ``to_dict`` (None losses read back as inf)."""
        values = dict(data)
        for key in ("loss", "loss_before"):
            values[key] = math.inf if values.get(key) is None else float(values[key])
        values["bits"] = tuple(int(b) for b in values["bits"])
        values["ranks"] = tuple(int(r) for r in values["ranks"])
        return cls(**values)


_CSV_FIELDS = (
    "number",
    "phase",
    "generation",
    "name",
    "loss",
    "loss_before",
    "bytes",
    "avg_bits",
    "seconds",
    "tokens",
    "plan_hash",
    "bits",
    "ranks",
)


def records_to_csv(records: Iterable[TrialRecord]) -> str:
    """One CSV row per record; bits and ranks as space-separated lists."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for r in records:
        writer.writerow(
            [
                r.number,
                r.phase,
                r.generation,
                r.name,
                f"{r.loss:.6f}",
                f"{r.loss_before:.6f}",
                r.bytes,
                f"{r.avg_bits:.4f}",
                f"{r.seconds:.3f}",
                r.tokens,
                r.plan_hash,
                " ".join(map(str, r.bits)),
                " ".join(map(str, r.ranks)),
            ]
        )
    return out.getvalue()


def records_from_csv(text: str) -> list[TrialRecord]:
    """The records ``records_to_csv`` wrote (floats as rounded there).

    Raises:
        ValueError: a missing column or a value of the wrong type.
    """
    try:
        return [
            TrialRecord(
                number=int(row["number"]),
                phase=row["phase"],
                generation=int(row["generation"]),
                plan_hash=row["plan_hash"],
                bits=tuple(int(b) for b in row["bits"].split()),
                ranks=tuple(int(r) for r in row["ranks"].split()),
                loss=float(row["loss"]),
                loss_before=float(row["loss_before"]),
                bytes=int(row["bytes"]),
                avg_bits=float(row["avg_bits"]),
                seconds=float(row["seconds"]),
                name=row["name"],
                tokens=int(row["tokens"]),
            )
            for row in csv.DictReader(io.StringIO(text))
        ]
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"not a trials.csv of records_to_csv ({err!r})") from None


def best_so_far(records: Sequence[TrialRecord]) -> list[float]:
    """Running minimum of the loss over the search phases, one value per search record.

    References are skipped: they are not proposals of the search.
    """
    best, out = math.inf, []
    for r in records:
        if r.phase in SEARCH_PHASES:
            best = min(best, r.loss)
            out.append(best)
    return out


def genome_of(record: TrialRecord, space: SearchSpace) -> npt.NDArray[np.int64]:
    """The (U, 2) choice indices of a record."""
    return np.array(
        [
            [space.bit_choices.index(b), space.rank_choices.index(r)]
            for b, r in zip(record.bits, record.ranks, strict=True)
        ],
        dtype=np.int64,
    )
