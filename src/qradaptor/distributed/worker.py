"""A worker: takes a search study's waiting plans, proxy-tunes each, and writes the scores back.

Any number of workers, on any machines that reach the study's storage, serve one search
(see ``search.queue`` for the protocol and ``search.job`` for what the study tells them).
A worker loads the study's model once, checks that its weights, structure and tokens are
the ones the study was made for, and then loops: claim the oldest waiting trial, tune its
plan with heartbeats running, write the score. It exits once the search has marked itself
finished and nothing is waiting, after ``max_trials``, or after ``idle_exit`` seconds
with nothing to do. Every layer is fitted once per bit-width per worker (``QuantCache``).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    import torch

    from qradaptor.distributed.queue import QueueSettings


@dataclass(frozen=True)
class WorkerSummary:
    """What one worker did."""

    scored: int
    """Trials it completed."""
    failed: int
    """Trials whose evaluation raised (recorded as FAIL with the error)."""
    duplicates: int
    """Claimed trials whose plan another trial had completed already (PRUNED)."""
    seconds: float
    """Wall time from the first claim attempt to exit."""
    peak_memory: int = 0
    """Peak bytes reserved by PyTorch's CUDA allocator (0 on CPU; the CUDA context is extra)."""


def load_study(storage: str, study_name: str, settings: QueueSettings | None = None) -> optuna.Study:
    """An existing study of ``storage``, opened with heartbeats; never creates one.

    Raises:
        ValueError: when the storage cannot be opened or reached, or holds no study of
            that name (the names it holds are listed).
    """
    import optuna

    from qradaptor.distributed.queue import display_url, open_storage

    opened = open_storage(storage, settings, must_exist=True)
    names = sorted(s.study_name for s in optuna.study.get_all_study_summaries(opened))
    if study_name not in names:
        raise ValueError(
            f"storage {display_url(storage)!r} has no study {study_name!r}; it has "
            f"{names or 'no studies'} (start the search first, or check --study)"
        )
    return optuna.load_study(study_name=study_name, storage=opened)


def check_job_inputs(
    study: optuna.Study, model: torch.nn.Module, train_ids: torch.Tensor, eval_ids: torch.Tensor
) -> None:
    """Refuses a model or tokens other than the ones the study's scores were made with.

    Raises:
        ValueError: naming each differing fingerprint field (model structure, weights, data).
    """
    from qradaptor.distributed.study import FINGERPRINT_ATTR, fingerprint_differences
    from qradaptor.models.structure import inspect_model
    from qradaptor.search.definition import inputs_fingerprint

    stored = study.user_attrs.get(FINGERPRINT_ATTR) or {}
    mine = inputs_fingerprint(model, inspect_model(model).signature, train_ids, eval_ids)
    differences = fingerprint_differences({k: stored.get(k) for k in mine}, mine)
    if differences:
        raise ValueError(
            f"this worker's model or data is not the one study {study.study_name!r} was made for; "
            "no trial was taken. Differences:\n  " + "\n  ".join(differences)
        )


def run_worker(
    storage: str,
    study_name: str,
    *,
    device: str | torch.device = "cpu",
    model: str | None = None,
    settings: QueueSettings | None = None,
    max_trials: int | None = None,
    idle_exit: float | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> WorkerSummary:
    """Serves one study until it is finished (see module docstring).

    Args:
        storage: the study's storage URL.
        study_name: the study's name.
        device: where to tune ("cpu", "cuda", "cuda:1").
        model: load the weights from here instead of the source the study names (the same
            weights at another path, e.g. on another machine); checked against the study.
        settings: heartbeat and polling settings (all processes of a study should agree).
        max_trials: exit after completing this many trials (None: no limit).
        idle_exit: exit after this many seconds without a trial to take (None: wait until
            the search is finished).
        name: this worker's name in the trials it scores (default host:pid).
        log: receives one line per trial.

    Raises:
        ValueError: for an unreachable storage, an unknown study, a study without a job,
            or a model/data that does not match the study; nothing is written then.
    """
    from qradaptor.distributed.job import is_finished, read_job
    from qradaptor.distributed.queue import QueueSettings
    from qradaptor.distributed.study import FINGERPRINT_ATTR
    from qradaptor.models.loading import load_model
    from qradaptor.quant.cache import QuantCache
    from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator

    settings = QueueSettings() if settings is None else settings
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    began = time.perf_counter()
    study = load_study(storage, study_name, settings)
    job = read_job(study)
    loaded = load_model(model or job.model, device=device)
    check_job_inputs(study, loaded.model, job.train_ids, job.eval_ids)
    proxy = ProxyConfig(**study.user_attrs[FINGERPRINT_ATTR]["proxy"])
    evaluator = ProxyEvaluator(
        loaded.model, job.train_ids, job.eval_ids, proxy, device=device, cache=QuantCache()
    )
    del loaded
    if log is not None:
        log(f"{name}: ready in {time.perf_counter() - began:.1f} s on {device}")
    counts = {"scored": 0, "failed": 0, "duplicates": 0}
    start = idle_since = time.perf_counter()
    while max_trials is None or counts["scored"] < max_trials:
        outcome = serve_one(study, evaluator, settings, name)
        if outcome is not None:
            counts[outcome] += 1
            idle_since = time.perf_counter()
            if log is not None:
                log(f"{name}: {outcome} at {time.perf_counter() - start:.1f} s (total {counts})")
            continue
        if is_finished(study) or (idle_exit is not None and time.perf_counter() - idle_since > idle_exit):
            break
        time.sleep(settings.poll_seconds)
    peak = 0
    if evaluator.device.type == "cuda":
        import torch

        peak = int(torch.cuda.max_memory_reserved(evaluator.device))
    return WorkerSummary(seconds=time.perf_counter() - start, peak_memory=peak, **counts)


def serve_one(study: optuna.Study, evaluator: Callable, settings: QueueSettings, name: str) -> str | None:
    """Claims and scores one waiting trial; returns "scored", "failed", "duplicates" or None.

    A trial interrupted here (Ctrl-C, SIGTERM raised as KeyboardInterrupt) is failed and
    put back in the queue at once, so no one waits for its heartbeat to go stale.
    """
    from optuna.trial import TrialState

    from qradaptor.distributed.queue import (
        Heartbeat,
        claim,
        complete,
        fail_stale,
        finish_unscored,
        trials_by_hash,
    )
    from qradaptor.distributed.study import score_attrs
    from qradaptor.plan import Plan

    fail_stale(study)
    trial = claim(study)
    if trial is None:
        return None
    from qradaptor.distributed.queue import retrying

    retrying(lambda: study._storage.set_trial_user_attr(trial._trial_id, "worker", name))
    key = trial.user_attrs["plan_hash"]
    done = [t for t in trials_by_hash(study).get(key, []) if t.state == TrialState.COMPLETE]
    if done:
        finish_unscored(study, trial._trial_id, "PRUNED", "duplicate_of", done[0].number)
        return "duplicates"
    try:
        with Heartbeat(study, trial._trial_id, settings.heartbeat_seconds):
            score = evaluator(Plan.from_json(trial.user_attrs["plan"]))
    except KeyboardInterrupt:
        requeue(study, trial._trial_id)
        raise
    except Exception as err:  # noqa: BLE001 - recorded in the study; the search reports it
        detail = traceback.format_exception_only(type(err), err)[-1].strip()
        finish_unscored(study, trial._trial_id, "FAIL", "error", f"{detail} (worker {name})")
        return "failed"
    attrs = score_attrs(score)
    complete(study, trial._trial_id, [score.loss, float(trial.user_attrs["bytes"])], attrs)
    return "scored"


def requeue(study: optuna.Study, trial_id: int) -> None:
    """Fails a claimed trial and adds its WAITING copy, as a stale heartbeat would."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return  # failed as stale meanwhile: the stale check has re-queued it
    callback = study._storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(study, study._storage.get_trial(trial_id))
