"""Proxy evaluations as a queue of Optuna trials, taken by worker processes on any machine.

The search (the coordinator) and its workers share nothing but an Optuna storage: an
SQLite file on one machine, PostgreSQL across machines. Optuna's own trial states carry
the queue, so optuna-dashboard shows a running search as it is:

    WAITING    submitted by the coordinator: params, and user attrs naming the plan
               (``plan`` JSON, ``plan_hash``, ``bytes``, phase, generation, name)
    RUNNING    claimed by one worker; the storage flips WAITING -> RUNNING in one
               transaction, so two workers never hold the same trial
    COMPLETE   values [proxy loss, bytes], written once; a later write is refused
    FAIL       the evaluation raised (user attr ``error``), or the worker stopped sending
               heartbeats: then Optuna's ``RetryHeartbeatStaleTrialCallback`` adds a
               WAITING copy, so another worker takes the plan again
    PRUNED     a worker found the plan already complete in another trial (a copy left by a
               killed coordinator or a retry that raced); user attr ``duplicate_of``

A plan therefore ends with exactly one COMPLETE trial, however many workers die on the way.
This module is storage glue only: it never sees a model.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class QueueSettings:
    """How workers prove they are alive, and how often a dead worker's trial is retried."""

    heartbeat_seconds: int = 5
    """A worker stamps its running trial this often."""
    grace_seconds: int = 30
    """A running trial whose stamp is older than this is failed and, within ``max_retry``, retried."""
    max_retry: int = 3
    """Retries of one plan after dead workers; then the search stops with an error."""
    poll_seconds: float = 0.5
    """How often the coordinator and idle workers look at the storage."""

    def __post_init__(self) -> None:
        for name in ("heartbeat_seconds", "grace_seconds", "max_retry"):
            value = getattr(self, name)
            minimum = 0 if name == "max_retry" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"QueueSettings.{name} must be an integer >= {minimum}, got {value!r}")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"QueueSettings.grace_seconds ({self.grace_seconds}) must exceed heartbeat_seconds "
                f"({self.heartbeat_seconds}), or live workers would be taken for dead"
            )
        if not self.poll_seconds > 0:
            raise ValueError(f"QueueSettings.poll_seconds must be > 0, got {self.poll_seconds!r}")


def display_url(url: str) -> str:
    """The storage URL with any password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as given
        return url


def open_storage(url: str, settings: QueueSettings | None = None, *, must_exist: bool = False) -> Any:
    """An Optuna RDB storage with heartbeats and retry of dead workers' trials.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////abs/study.db`` or
            ``postgresql+psycopg2://user@host:5432/db``.
        settings: heartbeat, grace and retry settings.
        must_exist: refuse an SQLite file that does not exist yet (a worker joins a study;
            it never creates a storage).

    Raises:
        ValueError: naming the URL (password hidden) when it is not a database URL, the
            SQLite file is missing, or the server cannot be reached.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    settings = QueueSettings() if settings is None else settings
    shown = display_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"storage {shown!r} is not a database URL; give e.g. sqlite:////path/study.db or "
            "postgresql+psycopg2://user@host:5432/dbname"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise ValueError(
                f"storage {shown!r}: an SQLite storage must be a file that every worker can open"
            )
        from pathlib import Path

        if must_exist and not Path(path).is_file():
            raise ValueError(f"storage {shown!r}: the SQLite file {path} does not exist (no study to join)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sqlite = parsed.get_backend_name() == "sqlite"
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sqlite:
        # sqlite3 opens a transaction lazily, at its first write: two processes can then both
        # read a trial as WAITING and both switch it to RUNNING (seen: up to 23 of 100 trials
        # claimed twice by 4 processes). isolation_level=None stops sqlite3 from opening
        # transactions itself, and the "begin" hook below opens each one IMMEDIATE, taking
        # the write lock before the read; the claim is then exclusive, as PostgreSQL's
        # SELECT ... FOR UPDATE makes it there.
        engine_kwargs["connect_args"] = {"timeout": 30, "isolation_level": None}
    try:
        with warnings.catch_warnings():
            # Heartbeats and their retry callback are marked experimental since Optuna 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_seconds,
                grace_period=settings.grace_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=settings.max_retry
                ),
            )
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError) as err:
        cause = err.__cause__ or err
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ValueError(f"cannot open storage {shown!r}: {reason}") from None
    if sqlite:
        from sqlalchemy import event

        event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def retrying(call: Callable[[], Any], attempts: int = 20) -> Any:
    """``call()``, retried while the database reports a lock or a lost connection.

    SQLite lets one writer in at a time and answers the others "database is locked" when
    its wait runs out; PostgreSQL may drop a connection. Optuna raises both as
    ``StorageInternalError`` caused by SQLAlchemy's ``OperationalError`` (reads may raise
    the ``OperationalError`` itself). The failed transaction was rolled back, so a retry is
    safe: a retried claim of a trial another process took meanwhile returns False.
    """
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    for attempt in range(attempts):
        try:
            return call()
        except (StorageInternalError, OperationalError) as err:
            transient = isinstance(err, OperationalError) or isinstance(err.__cause__, OperationalError)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (1 + attempt % 5))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class QueueEntry:
    """One plan for the workers: its Optuna params and the user attrs that name it."""

    params: Mapping[str, int]
    distributions: Mapping[str, Any]
    user_attrs: Mapping[str, Any]
    """Must hold ``plan_hash``, ``plan`` (JSON) and ``bytes``."""


def submit(study: optuna.Study, entries: Sequence[QueueEntry]) -> list[int]:
    """Adds one WAITING trial per entry, in order; returns their trial numbers."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    numbers = []
    for entry in entries:
        missing = {"plan_hash", "plan", "bytes"} - set(entry.user_attrs)
        assert not missing, f"queue entries need {sorted(missing)}"
        trial = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=dict(entry.params),
            distributions=dict(entry.distributions),
            user_attrs=dict(entry.user_attrs),
        )
        # The storage's own id -> number mapping: another process may add trials meanwhile.
        trial_id = retrying(
            lambda trial=trial: storage.create_new_trial(study._study_id, template_trial=trial)
        )
        numbers.append(retrying(lambda trial_id=trial_id: storage.get_trial_number_from_id(trial_id)))
    return numbers


def claim(study: optuna.Study, trial_ids: Iterable[int] | None = None) -> FrozenTrial | None:
    """Takes the oldest WAITING trial (or the first of ``trial_ids`` still waiting) for this process.

    The WAITING -> RUNNING switch is one transaction in the storage that locks before it
    reads (a row lock in PostgreSQL, ``BEGIN IMMEDIATE`` in SQLite, see ``open_storage``),
    so a trial is claimed by one process only.
    The first heartbeat is written at once.

    Returns:
        The claimed trial, or None when nothing is waiting.
    """
    from optuna.trial import TrialState

    storage = study._storage
    if trial_ids is None:
        waiting = retrying(
            lambda: storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        )
        trial_ids = [t._trial_id for t in sorted(waiting, key=lambda t: t.number)]
    for trial_id in trial_ids:
        if retrying(lambda trial_id=trial_id: _take(storage, trial_id)):
            retrying(lambda trial_id=trial_id: storage.record_heartbeat(trial_id))
            return retrying(lambda trial_id=trial_id: storage.get_trial(trial_id))
    return None


def _take(storage: Any, trial_id: int) -> bool:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.RUNNING))
    except UpdateFinishedTrialError:
        return False


class Heartbeat:
    """A daemon thread that stamps one running trial every ``seconds`` until stopped.

    Example:
        >>> with Heartbeat(study, trial._trial_id, 5):
        ...     evaluate(plan)
    """

    def __init__(self, study: optuna.Study, trial_id: int, seconds: float) -> None:
        self._storage = study._storage
        self._trial_id = trial_id
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                retrying(lambda: self._storage.record_heartbeat(self._trial_id), attempts=3)
            except Exception:  # noqa: BLE001 - a missed stamp only matters if all until the grace are
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def complete(study: optuna.Study, trial_id: int, values: Sequence[float], attrs: Mapping[str, Any]) -> bool:
    """Writes a claimed trial's attrs and values and marks it COMPLETE.

    Returns:
        False when the trial had been finished meanwhile (failed as stale after a long
        stall, and retried elsewhere): the values are dropped, so no plan completes twice.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        for key, value in attrs.items():
            retrying(lambda key=key, value=value: storage.set_trial_user_attr(trial_id, key, value))
        return bool(
            retrying(
                lambda: storage.set_trial_state_values(
                    trial_id, state=TrialState.COMPLETE, values=[float(v) for v in values]
                )
            )
        )
    except UpdateFinishedTrialError:
        return False


def finish_unscored(study: optuna.Study, trial_id: int, state: str, key: str, value: Any) -> None:
    """Ends a claimed trial without values: FAIL (``error``) or PRUNED (``duplicate_of``)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        retrying(lambda: storage.set_trial_user_attr(trial_id, key, value))
        retrying(lambda: storage.set_trial_state_values(trial_id, state=TrialState[state]))
    except UpdateFinishedTrialError:
        pass


def fail_stale(study: optuna.Study) -> None:
    """Fails the running trials of dead workers; Optuna's callback re-enqueues them."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retrying(lambda: optuna.storages.fail_stale_trials(study))


def trials_by_hash(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """Every trial that names a plan, grouped by plan hash, by trial number."""
    groups: dict[str, list[FrozenTrial]] = {}
    trials = retrying(lambda: study.get_trials(deepcopy=False))
    for trial in sorted(trials, key=lambda t: t.number):
        key = trial.user_attrs.get("plan_hash")
        if key is not None:
            groups.setdefault(key, []).append(trial)
    return groups


def wait_for(
    study: optuna.Study,
    hashes: Sequence[str],
    settings: QueueSettings,
    *,
    on_poll: Callable[[int, int], None] | None = None,
    check_alive: Callable[[], None] | None = None,
) -> dict[str, FrozenTrial]:
    """Blocks until every plan hash has a COMPLETE trial; returns those trials by hash.

    While waiting, fails dead workers' trials (so they are retried) and calls
    ``on_poll(done, running)`` and ``check_alive()`` (which may raise, e.g. when every
    local worker has exited).

    Raises:
        RuntimeError: when a plan's last trial failed and nothing is left to retry it: the
            message names the plan and the error the worker recorded.
    """
    from optuna.trial import TrialState

    wanted = list(dict.fromkeys(hashes))
    orphaned: dict[int, float] = {}  # failed trial number -> when first seen without its retry
    while True:
        fail_stale(study)
        groups = trials_by_hash(study)
        done: dict[str, FrozenTrial] = {}
        running = 0
        for key in wanted:
            trials = groups.get(key, [])
            finished = [t for t in trials if t.state == TrialState.COMPLETE]
            if finished:
                done[key] = finished[0]
                continue
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
                running += any(t.state == TrialState.RUNNING for t in trials)
                continue
            failed = [t for t in trials if t.state == TrialState.FAIL]
            if failed:
                last = failed[-1]
                retried = len(last.system_attrs.get("retry_history", []))
                error = last.user_attrs.get("error")
                # A stale trial is failed first and copied second, maybe by another process:
                # while a retry is due, allow the copy a grace period to appear.
                if error is None and retried < settings.max_retry:
                    first_seen = orphaned.setdefault(last.number, time.monotonic())
                    if time.monotonic() - first_seen < settings.grace_seconds:
                        continue
                reason = error or f"its worker stopped sending heartbeats {retried + 1} time(s)"
                raise RuntimeError(
                    f"plan {key} ({last.user_attrs.get('name') or 'unnamed'}, trial {last.number}) "
                    f"failed: {reason}"
                )
            raise AssertionError(f"plan {key} was never submitted")
        if on_poll is not None:
            on_poll(len(done), running)
        if len(done) == len(wanted):
            return done
        if check_alive is not None:
            check_alive()
        time.sleep(settings.poll_seconds)
