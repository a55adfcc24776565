"""The search's memory: an Optuna study where every proxy evaluation is one finished trial.

A search is deterministic given its seed and the scores it receives, so resuming needs no
saved search state: the search is run again from the start, and every plan the study has
already scored is answered from the study instead of being tuned again. The replay follows
the same path until the first plan the study has not seen, and from there the search goes
on as if it had never stopped. A trial is written only once its score is known, so a
process killed mid-evaluation loses that one evaluation and nothing else; a finished trial
is never lost and never repeated.

A study is therefore a cache of scores, and it stays valid as long as whatever decides a
score is unchanged: the model, the data, the proxy settings, the plan settings and the
search space. Those form the study's fingerprint, stored in the study; opening a study
whose fingerprint differs is refused, naming the fields that differ, before anything is
written. Search settings (seed, budget, generations) may change between runs: the scores
stay true.

Trials (``optuna.trial.FrozenTrial``, inspectable with optuna-dashboard):
    params       "<unit>.bits" and "<unit>.rank" per search unit, categorical over the choices
    values       [proxy loss, bytes], both minimised
    user_attrs   phase, generation, plan_hash, loss_before, avg_bits, bytes, seconds, tokens,
                 name, collapsed (score at or above ln(vocab)); trials scored by workers also
                 hold the plan's JSON (``plan``) and the ``worker`` that scored it (see ``queue``)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.search.records import PHASES, TrialRecord

if TYPE_CHECKING:
    import optuna

    from qradaptor.distributed.queue import QueueSettings
    from qradaptor.plan import Plan
    from qradaptor.search.proxy import ProxyScore
    from qradaptor.search.space import MemoryTable, SearchSpace

FINGERPRINT_ATTR = "qradaptor.fingerprint"
"""Study user attribute holding the fingerprint (a JSON-able dict)."""
DEFAULT_STUDY_NAME = "qradaptor"


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of an SQLite file (absolute, so it does not depend on the cwd)."""
    return f"sqlite:///{Path(path).resolve()}"


def _canonical(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparing fingerprints."""
    return json.loads(json.dumps(value, sort_keys=True))


def fingerprint_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """One line per key whose value differs between two fingerprints (missing keys included)."""
    stored, wanted = _canonical(dict(stored)), _canonical(dict(wanted))
    lines = []
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            lines.append(f"{key}: study has {stored.get(key)!r}, this run has {wanted.get(key)!r}")
    return lines


def open_study(
    storage: str | optuna.storages.BaseStorage,
    fingerprint: Mapping[str, Any],
    study_name: str = DEFAULT_STUDY_NAME,
) -> optuna.Study:
    """Creates the study, or loads it after checking that it was made for the same scores.

    Args:
        storage: an Optuna storage URL, e.g. ``sqlite_url("run/study.db")`` (opened with
            heartbeats, see ``queue.open_storage``), or an opened storage.
        fingerprint: JSON-able description of everything that decides a proxy score.
        study_name: the study's name within the storage.

    Returns:
        The study (directions minimise, minimise).

    Raises:
        ValueError: if the stored study has another fingerprint (each differing field is
            named) or other directions; the storage is left untouched.
    """
    import optuna

    from qradaptor.distributed.queue import display_url, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str):
        storage = open_storage(storage)
    shown = display_url(getattr(storage, "url", str(storage)))
    wanted = _canonical(dict(fingerprint))
    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage)}
    if study_name not in names:
        study = optuna.create_study(
            storage=storage, study_name=study_name, directions=["minimize", "minimize"]
        )
        study.set_user_attr(FINGERPRINT_ATTR, wanted)
        return study
    study = optuna.load_study(study_name=study_name, storage=storage)
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        raise ValueError(
            f"study {study_name!r} in {shown} was not made by qradaptor (it has no fingerprint); "
            "use another storage or study name"
        )
    differences = fingerprint_differences(stored, wanted)
    if differences:
        raise ValueError(
            f"study {study_name!r} in {shown} was made for other scores and cannot be resumed by this "
            "run; its trials are kept. Differences:\n  " + "\n  ".join(differences)
        )
    directions = [d.name for d in study.directions]
    if directions != ["MINIMIZE", "MINIMIZE"]:
        raise ValueError(f"study {study_name!r} has directions {directions}, expected [MINIMIZE, MINIMIZE]")
    return study


def _param_names(space: SearchSpace) -> list[tuple[str, str]]:
    return [(f"{unit}.bits", f"{unit}.rank") for unit in space.unit_names]


def record_of(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> TrialRecord:
    """The TrialRecord of a finished trial of a qradaptor study."""
    names = _param_names(space)
    attrs = trial.user_attrs
    loss, used = trial.values
    return TrialRecord(
        number=trial.number,
        phase=attrs["phase"],
        generation=int(attrs["generation"]),
        plan_hash=attrs["plan_hash"],
        bits=tuple(int(trial.params[b]) for b, _ in names),
        ranks=tuple(int(trial.params[r]) for _, r in names),
        loss=float(loss),
        loss_before=math.inf if attrs.get("loss_before") is None else float(attrs["loss_before"]),
        bytes=int(used),
        avg_bits=float(attrs["avg_bits"]),
        seconds=float(attrs["seconds"]),
        name=str(attrs.get("name", "")),
        tokens=int(attrs.get("tokens", 0)),
    )


def completed_records(study: optuna.Study, space: SearchSpace) -> list[TrialRecord]:
    """Every finished trial of ``study`` as a record, by trial number."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [record_of(t, space) for t in sorted(trials, key=lambda t: t.number)]


class StudyObjective:
    """The search's objective ``Plan -> loss``, backed by a study: each plan is scored once, ever.

    Scores a plan only when no finished trial of the study has the plan's hash; otherwise
    the stored score is returned. Plans are scored either here, one by one, by calling
    ``evaluate`` (a ``ProxyEvaluator``), or, with ``evaluate=None``, by workers: a batch's
    new plans become WAITING trials (see ``queue``) and the call returns when workers have
    completed them all. Either way a plan's trial number is its place in the order asked
    for, so both give the same records. The driver sets ``phase`` and ``generation``
    before each stage so new trials say where they came from. ``records`` lists, in call
    order and without repeats, the record of every distinct plan this run asked for.
    """

    def __init__(
        self,
        study: optuna.Study,
        evaluate: Callable[[Plan], ProxyScore] | None,
        table: MemoryTable,
        on_record: Callable[[TrialRecord, bool], None] | None = None,
        *,
        queue: QueueSettings | None = None,
        on_poll: Callable[[int, int], None] | None = None,
        check_alive: Callable[[], None] | None = None,
    ) -> None:
        """Reads the study's finished trials into the cache.

        Args:
            study: from ``open_study``.
            evaluate: scores a plan by proxy tuning; None hands new plans to workers.
            table: prices plans; its ``space`` names the units and choices.
            on_record: called with (record, replayed) for every distinct plan asked for.
            queue: polling and retry settings when workers score (default ``QueueSettings()``).
            on_poll: called with (done, running) of the batch while waiting for workers.
            check_alive: called while waiting; raises to stop the wait (e.g. no worker left).
        """
        from qradaptor.distributed.queue import QueueSettings

        self.study = study
        self.table = table
        self.space = table.space
        self.phase = "initial"
        self.generation = 0
        self.name = ""
        self._evaluate = evaluate
        self._on_record = on_record
        self._queue = QueueSettings() if queue is None else queue
        self._on_poll = on_poll
        self._check_alive = check_alive
        self._cache = {r.plan_hash: r for r in completed_records(study, self.space)}
        self.replayed = 0
        self.evaluated = 0
        self.records: list[TrialRecord] = []
        self._seen: set[str] = set()

    def record(self, plan: Plan) -> TrialRecord:
        """The record of ``plan``: from the study, or by scoring and storing it."""
        return self.record_many([plan])[0]

    def record_many(self, plans: list[Plan], names: list[str] | None = None) -> list[TrialRecord]:
        """The records of ``plans``; the new ones are scored as one batch, in order.

        Args:
            plans: plans to score; repeats are scored once.
            names: a name per plan for new trials (default: ``self.name`` or the plan's).
        """
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        names = [self.name] * len(plans) if names is None else names
        new: dict[str, tuple[Plan, str]] = {}
        for plan, name in zip(plans, names, strict=True):
            if plan.plan_hash not in self._cache:
                new.setdefault(plan.plan_hash, (plan, name or plan.name))
        if new and self._evaluate is None:
            self._score_by_workers(list(new.values()))
        elif new:
            for key, (plan, name) in new.items():
                self._cache[key] = self._score_and_store(plan, name)
        records = []
        for plan in plans:
            key = plan.plan_hash
            record = self._cache[key]
            if key not in self._seen:
                self._seen.add(key)
                self.records.append(record)
                replayed = key not in new
                self.replayed += replayed
                if self._on_record is not None:
                    self._on_record(record, replayed)
            records.append(record)
        return records

    def __call__(self, plan: Plan) -> float:
        return self.record(plan).loss

    def many(self, plans: list[Plan]) -> list[float]:
        """Losses of a batch of plans (what ``score_plans`` calls)."""
        return [r.loss for r in self.record_many(plans)]

    def _trial_fields(self, plan: Plan, name: str) -> tuple[dict, dict, dict]:
        """(params, distributions, user attrs) of a new trial of ``plan``."""
        from optuna.distributions import CategoricalDistribution

        genome = self.space.from_plan(plan)  # (U, 2)
        bits = [self.space.bit_choices[i] for i in genome[:, 0]]
        ranks = [self.space.rank_choices[j] for j in genome[:, 1]]
        bits_choice = CategoricalDistribution(self.space.bit_choices)
        rank_choice = CategoricalDistribution(self.space.rank_choices)
        params: dict[str, int] = {}
        distributions: dict[str, CategoricalDistribution] = {}
        for (bits_name, rank_name), b, r in zip(_param_names(self.space), bits, ranks, strict=True):
            params[bits_name], params[rank_name] = int(b), int(r)
            distributions[bits_name], distributions[rank_name] = bits_choice, rank_choice
        attrs = {
            "phase": self.phase,
            "generation": int(self.generation),
            "plan_hash": plan.plan_hash,
            "avg_bits": float(self.table.avg_bits_of(genome)),
            "bytes": int(self.table.bytes_of(genome)),
            "name": name,
        }
        return params, distributions, attrs

    def _score_and_store(self, plan: Plan, name: str) -> TrialRecord:
        import optuna

        from qradaptor.distributed.queue import retrying

        params, distributions, attrs = self._trial_fields(plan, name)
        score = self._evaluate(plan)
        self.evaluated += 1
        attrs.update(score_attrs(score))
        trial = optuna.trial.create_trial(
            params=params,
            distributions=distributions,
            values=[float(score.loss), float(attrs["bytes"])],
            user_attrs=attrs,
        )
        # Read back the trial by the id the storage gave it (never "the last trial": another
        # process may add one meanwhile), so a new record is the same as its later replay.
        storage = self.study._storage
        trial_id = retrying(lambda: storage.create_new_trial(self.study._study_id, template_trial=trial))
        return record_of(retrying(lambda: storage.get_trial(trial_id)), self.space)

    def _score_by_workers(self, items: list[tuple[Plan, str]]) -> None:
        from optuna.trial import TrialState

        from qradaptor.distributed.queue import QueueEntry, submit, trials_by_hash, wait_for

        pending = {TrialState.WAITING, TrialState.RUNNING}
        groups = trials_by_hash(self.study)
        entries = []
        for plan, name in items:
            if any(t.state in pending for t in groups.get(plan.plan_hash, [])):
                continue  # submitted by an earlier run of this search that stopped: wait for it
            params, distributions, attrs = self._trial_fields(plan, name)
            attrs["plan"] = plan.to_json()
            entries.append(QueueEntry(params, distributions, attrs))
        submit(self.study, entries)
        done = wait_for(
            self.study,
            [plan.plan_hash for plan, _ in items],
            self._queue,
            on_poll=self._on_poll,
            check_alive=self._check_alive,
        )
        for key, trial in done.items():
            self._cache[key] = record_of(trial, self.space)
        self.evaluated += len(done)


def score_attrs(score: ProxyScore) -> dict[str, Any]:
    """The user attrs a proxy score adds to its trial."""
    attrs = {
        "loss_before": score.loss_before if math.isfinite(score.loss_before) else None,
        "seconds": float(score.seconds),
        "tokens": int(score.tokens),
        "collapsed": bool(score.collapsed),
    }
    if score.skipped_steps:  # a fault worth seeing in the trial table; none on most trials
        attrs["skipped_steps"] = int(score.skipped_steps)
    return attrs
