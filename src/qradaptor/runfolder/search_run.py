"""A search run folder (``qra search``): its layout and its records, summary.json and config.json.

    RUN/summary.json        ``SearchSummary``: evaluations and seconds per phase, the chosen
                            plan's trial, the references, the search's cost; written last
    RUN/config.json         ``SearchSettings``: the settings and the command line (passwords hidden)
    RUN/plan.json           the chosen plan (qra eval --plan, qra train --plan)
    RUN/trials.csv          every trial of the study (``search.records``), and trials.jsonl
    RUN/screened.csv        the halving strategy's lower rungs
    RUN/pareto.json         the trials on the Pareto front
    RUN/sensitivity.json    the profile (``sensitivity_table.SensitivityTable``), and sensitivity.csv
    RUN/study.db            the Optuna study (the score cache; a search resumes from it)
    RUN/*.png               plots

``recipes/search_output.py`` writes the folder; the experiment report reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.runfolder.jsonfile import check_format, need, read_json

if TYPE_CHECKING:
    from qradaptor.search.records import TrialRecord

SEARCH_SUMMARY = "summary.json"
"""The search's record, written last: its presence says the search finished."""
SEARCH_CONFIG = "config.json"
"""The settings and command line of the last ``qra search`` on the folder."""
SEARCH_PLAN = "plan.json"
"""The chosen plan."""
SEARCH_TRIALS_CSV = "trials.csv"
"""Every trial, one line each."""
SEARCH_TRIALS_JSONL = "trials.jsonl"
"""Every trial, one JSON object a line."""
SEARCH_SCREENED = "screened.csv"
"""The halving strategy's lower rungs (generation = rung)."""
SEARCH_PARETO = "pareto.json"
"""The trials on the Pareto front."""
SEARCH_SENSITIVITY = "sensitivity.json"
"""The sensitivity profile (absent with --no-profile)."""
SEARCH_SENSITIVITY_CSV = "sensitivity.csv"
"""The same as a table."""
SEARCH_FORMAT = 1
"""The format of summary.json and config.json this code writes."""


@dataclass(frozen=True)
class Reference:
    """A reference plan's trial and how the chosen plan compares with it."""

    trial: TrialRecord
    """The reference's evaluation."""
    chosen_minus_reference: float | None
    """The chosen loss minus the reference's (negative is better); None when not finite."""


@dataclass(frozen=True)
class SearchSummary:
    """summary.json: what a finished search evaluated, chose and cost.

    ``search.report.summarise`` fills the fields up to ``references`` from a search's trials;
    the rest, about the run, were added over time, so a file from before one of them reads it
    as None.
    """

    evaluations: Mapping[str, int]
    """Trials per phase (every phase of ``search.records.PHASES``)."""
    seconds: Mapping[str, float]
    """Proxy-evaluation seconds per phase."""
    best_loss: Mapping[str, float | None]
    """Lowest finite loss per phase (None: none)."""
    total_evaluations: int
    """Trials in all, references included."""
    total_seconds: float
    """Proxy-evaluation seconds in all."""
    pareto: tuple[int, ...]
    """Numbers of the trials on the Pareto front, sorted."""
    chosen: TrialRecord
    """The chosen plan's trial: the lowest loss within the budget."""
    chosen_on_pareto: bool
    """The chosen trial is on the Pareto front."""
    references: tuple[Reference, ...]
    """The reference plans' trials."""
    budget: str | None = None
    """The budget in words, e.g. "3.5 avg bits"."""
    note: str | None = None
    """What the search had to say (e.g. that the budget left nothing to search)."""
    strategy: str | None = None
    """"halving" or "paper"."""
    screened: Mapping[str, int] | None = None
    """Plans scored on each lower rung of the halving strategy, e.g. {"rung0": 24}."""
    evaluated_this_run: int | None = None
    """Plans scored by this ``qra search`` run."""
    replayed_from_study: int | None = None
    """Plans read back from the study (scored by an earlier run)."""
    stage_seconds: Mapping[str, float] | None = None
    """Wall seconds of each stage."""
    wall_seconds: float | None = None
    """Wall seconds of the last ``qra search`` run, profiling included."""
    proxy_tokens: int | None = None
    """Tokens the proxy fine-tunes trained on, every rung's."""
    epoch_tokens: int | None = None
    """Tokens of one epoch of the training data."""
    search_cost_epochs: float | None = None
    """proxy_tokens / epoch_tokens."""
    data_roles: Mapping[str, str] | None = None
    """Which text calibrated, which selected and what is reported as test."""
    chance_loss: float | None = None
    """ln(vocab): a plan scored at or above it collapsed."""
    collapsed_plans: int | None = None
    """Plans scored at or above chance."""
    chosen_collapsed: bool | None = None
    """The chosen plan collapsed."""
    profiled: bool = False
    """The search had a sensitivity profile: ``bits_sensitivity_pearson`` is written."""
    bits_sensitivity_pearson: float | None = None
    """Pearson correlation of the chosen bits with the sensitivity (None for a constant plan)."""

    def to_dict(self) -> dict[str, Any]:
        """summary.json's JSON object, in the order ``qra search`` has always written it
        (``format`` first)."""
        data: dict[str, Any] = {
            "format": SEARCH_FORMAT,
            "evaluations": dict(self.evaluations),
            "seconds": dict(self.seconds),
            "best_loss": dict(self.best_loss),
            "total_evaluations": self.total_evaluations,
            "total_seconds": self.total_seconds,
            "pareto": list(self.pareto),
            "chosen": {**self.chosen.to_dict(), "on_pareto": self.chosen_on_pareto},
            "references": [
                {**r.trial.to_dict(), "chosen_minus_reference": r.chosen_minus_reference}
                for r in self.references
            ],
        }
        for f in fields(self):
            if f.name in data or f.name in ("chosen_on_pareto", "profiled", "bits_sensitivity_pearson"):
                continue
            value = getattr(self, f.name)
            data[f.name] = dict(value) if isinstance(value, Mapping) else value
        if self.profiled:
            data["bits_sensitivity_pearson"] = self.bits_sensitivity_pearson
        return data

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = SEARCH_SUMMARY) -> SearchSummary:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: not an object, a newer format, or a key of ``summarise`` missing or
                malformed; the message names ``path``.
        """
        from qradaptor.search.records import TrialRecord  # numpy: only when a summary is read

        chosen = dict(need(data, "chosen", path))
        evaluations, seconds = need(data, "evaluations", path), need(data, "seconds", path)
        check_format(data, SEARCH_FORMAT, path)
        if not isinstance(evaluations, Mapping) or not isinstance(seconds, Mapping):
            raise ValueError(f"{path}: 'evaluations' and 'seconds' must map phases to numbers")
        try:
            on_pareto = bool(chosen.pop("on_pareto", False))
            references = tuple(
                Reference(
                    TrialRecord.from_dict({k: v for k, v in r.items() if k != "chosen_minus_reference"}),
                    r.get("chosen_minus_reference"),
                )
                for r in data.get("references") or ()
            )
            trial = TrialRecord.from_dict(chosen)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: 'chosen' and 'references' must be trial records ({err!r})") from None
        later = {f.name: data.get(f.name) for f in fields(cls) if f.name not in _SUMMARISED}
        later["profiled"] = "bits_sensitivity_pearson" in data
        return cls(
            evaluations=dict(evaluations),
            seconds=dict(seconds),
            best_loss=dict(data.get("best_loss") or {}),
            total_evaluations=need(data, "total_evaluations", path),
            total_seconds=data.get("total_seconds", 0.0),
            pareto=tuple(data.get("pareto") or ()),
            chosen=trial,
            chosen_on_pareto=on_pareto,
            references=references,
            **later,
        )

    def save(self, run: Path) -> None:
        """Writes ``run``/summary.json atomically."""
        from qradaptor.atomic import write_text

        write_text(run / SEARCH_SUMMARY, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def load(cls, run: Path) -> SearchSummary:
        """``run``/summary.json; ValueError naming the file when missing or not a summary."""
        path = run / SEARCH_SUMMARY
        return cls.from_dict(read_json(path), path)


_SUMMARISED = frozenset(
    "evaluations seconds best_loss total_evaluations total_seconds pareto chosen chosen_on_pareto "
    "references profiled".split()
)
"""Fields read from ``summarise``'s keys (and ``profiled``, which no key holds)."""


@dataclass(frozen=True)
class SearchSettings:
    """config.json: what a ``qra search`` was asked to do, for the person reading the folder."""

    settings: Mapping[str, Any]
    """The model, budget, data, device, study, preset, search and proxy configs, as given."""
    command: str
    """The command line, every URL's password hidden."""

    def to_dict(self) -> dict[str, Any]:
        """config.json's object: ``format`` first, the settings, then the command."""
        return {"format": SEARCH_FORMAT, **self.settings, "command": self.command}

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = SEARCH_CONFIG) -> SearchSettings:
        """Inverse of ``to_dict``."""
        command = need(data, "command", path)
        check_format(data, SEARCH_FORMAT, path)
        settings = {k: v for k, v in data.items() if k not in ("format", "command")}
        return cls(settings, str(command))

    def save(self, run: Path) -> None:
        """Writes ``run``/config.json atomically, every URL's password hidden."""
        from qradaptor.atomic import write_text
        from qradaptor.redact import redact

        write_text(run / SEARCH_CONFIG, redact(json.dumps(self.to_dict(), indent=2)) + "\n")

    @classmethod
    def load(cls, run: Path) -> SearchSettings:
        """``run``/config.json; ValueError naming the file when missing or not one."""
        path = run / SEARCH_CONFIG
        return cls.from_dict(read_json(path), path)
