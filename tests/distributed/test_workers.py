"""Workers on one study: same results as one process, no duplicate or lost trial, retry after SIGKILL."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from optuna.trial import TrialState

from qradaptor.distributed.launch import LocalWorkers
from qradaptor.distributed.queue import QueueSettings, trials_by_hash
from qradaptor.distributed.study import sqlite_url
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import parse_budget
from qradaptor.search.pipeline import SearchConfig, WorkerQueue
from qradaptor.search.proxy import ProxyConfig

PROXY = ProxyConfig(steps=4, batch_size=4, lr=1e-2, warmup=1, eval_batches=2)
CONFIG = SearchConfig(
    budget=parse_budget("3.6bits"),
    bits=(2, 3, 4, 8),
    ranks=(4, 8),
    population=4,
    offspring=4,
    generations=1,
    bayes=BayesConfig(iterations=1, pool=64, batch=4),
    group_size=32,
)
"""Batches of 4 (references, initial population, each generation, the Bayes round): 4 workers stay busy."""
SETTINGS = QueueSettings(heartbeat_seconds=1, grace_seconds=30, poll_seconds=0.3)
"""Nothing dies: a grace long enough that a worker whose writes wait on SQLite's lock on a loaded
machine is never taken for dead (and its trial scored twice, under another number)."""
KILL_SETTINGS = QueueSettings(heartbeat_seconds=1, grace_seconds=10, poll_seconds=0.3)
"""A worker is killed: its trial goes back to the queue once its heartbeat is 10 s old."""


@pytest.fixture(scope="module")
def model_dir(trained_llama, word_tokenizer_factory, tmp_path_factory):
    """The trained tiny Llama and a tokenizer in a folder: what workers load."""
    folder = tmp_path_factory.mktemp("trained-llama")
    trained_llama.save_pretrained(folder)
    word_tokenizer_factory().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_dir):
    """The model as a worker loads it (fp32 from the folder), so the fingerprints agree."""
    from qradaptor.models.loading import load_model

    return load_model(str(model_dir)).model


@pytest.fixture(scope="module")
def single_process(model, pattern_search, tmp_path_factory):
    """The reference: the same search scored in this process."""
    return pattern_search(model, sqlite_url(tmp_path_factory.mktemp("single") / "study.db"), CONFIG, PROXY)


def _start_all(pool: LocalWorkers) -> None:
    """Starts the workers and waits (up to 180 s) until each has loaded the model, so the first
    to load on a loaded machine cannot score every batch before the others join."""
    pool.start()
    deadline = time.monotonic() + 180
    while not all(
        p.log.is_file() and ": ready in " in p.log.read_text(errors="replace") for p in pool.processes
    ):
        exited = [p for p in pool.processes if p.popen.poll() is not None]
        assert not exited, exited[0].log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the workers did not load the model in 180 s"
        time.sleep(0.2)


def _with_workers(model, model_dir, pattern_search, storage, count, tmp_path, during=None):
    settings = SETTINGS if during is None else KILL_SETTINGS
    pool = LocalWorkers(storage, "qradaptor", ["cpu"] * count, tmp_path / "logs", settings)
    queue = WorkerQueue(
        str(model_dir), settings, on_ready=lambda _: _start_all(pool), check_alive=pool.check_alive
    )
    watcher = None
    if during is not None:
        watcher = threading.Thread(target=during, args=(pool,), daemon=True)
        watcher.start()
    with pool:
        outcome = pattern_search(model, storage, CONFIG, PROXY, workers=queue)
    if watcher is not None:
        watcher.join(timeout=60)
    return outcome, pool


def _study(storage):
    import optuna

    return optuna.load_study(study_name="qradaptor", storage=storage)


def _assert_each_plan_completed_once(storage, outcome) -> None:
    groups = trials_by_hash(_study(storage))
    assert set(groups) == {r.plan_hash for r in outcome.records}  # none lost, none extra
    for key, trials in groups.items():
        states = [t.state for t in trials]
        assert states.count(TrialState.COMPLETE) == 1, (key, states)
        assert TrialState.WAITING not in states and TrialState.RUNNING not in states, (key, states)


def _same_records(a, b) -> bool:
    """The same top-rung records and, for the halving strategy, the same lower rungs."""
    return all(
        [(r.phase, r.plan_hash, r.loss, r.bytes) for r in getattr(a, rungs)]
        == [(r.phase, r.plan_hash, r.loss, r.bytes) for r in getattr(b, rungs)]
        for rungs in ("records", "screened")
    )


@pytest.mark.slow
def test_workers_give_the_single_process_search_with_no_duplicate_or_missing_trial(
    model, model_dir, pattern_search, storage_url, single_process, tmp_path
) -> None:
    # Four workers, so every batch of 4 is claimed at once (two workers also ran here until
    # 2026-12-06: they add no race that four lack, and cost 35 s of CI per storage).
    outcome, pool = _with_workers(model, model_dir, pattern_search, storage_url, 4, tmp_path)
    assert _same_records(outcome, single_process)
    assert [r.number for r in outcome.records] == [r.number for r in single_process.records]
    assert outcome.chosen.plan_hash == single_process.chosen.plan_hash
    _assert_each_plan_completed_once(storage_url, outcome)
    # The halving strategy (the default) scores its lower rungs in the search's own process.
    scored = len(outcome.records) + len(outcome.screened)
    assert outcome.screened and outcome.evaluated == scored and outcome.replayed == 0
    scorers = {t.user_attrs["worker"] for t in _study(storage_url).get_trials(states=(TrialState.COMPLETE,))}
    assert len(scorers) >= 2, scorers  # the work was shared
    assert all(p.popen.returncode == 0 for p in pool.processes)  # each left once the search was done
    # Run again: every plan is read back from the study, no worker is needed.
    again = pattern_search(model, storage_url, CONFIG, PROXY, workers=WorkerQueue(str(model_dir), SETTINGS))
    assert again.evaluated == 0 and again.replayed == scored
    assert _same_records(again, outcome)


def _scoring(storage: str) -> bool:
    """True when worker-0 holds a running trial that names it."""
    running = _study(storage).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.user_attrs.get("worker", "").startswith("worker-0@") for t in running)


def _kill_first_worker_mid_trial(pool: LocalWorkers, storage: str) -> None:
    # Stopped, then checked again, then killed: a trial seen running may have ended before a
    # kill sent straight away (a trial takes well under a second).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if pool.processes and _scoring(storage):
            worker = pool.processes[0].popen
            worker.send_signal(signal.SIGSTOP)
            try:
                still = _scoring(storage)
            except Exception:  # noqa: BLE001 - the stopped worker may hold SQLite's lock; look again
                still = False
            if still:
                worker.send_signal(signal.SIGKILL)
                return
            worker.send_signal(signal.SIGCONT)
        time.sleep(0.2)


@pytest.mark.slow
def test_a_sigkilled_worker_s_trial_is_retried_by_another(
    model, model_dir, pattern_search, single_process, tmp_path
) -> None:
    storage_url = sqlite_url(tmp_path / "study.db")  # the protocol is the storage's; one is enough here
    outcome, pool = _with_workers(
        model,
        model_dir,
        pattern_search,
        storage_url,
        2,
        tmp_path,
        during=lambda p: _kill_first_worker_mid_trial(p, storage_url),
    )
    assert pool.processes[0].popen.returncode == -signal.SIGKILL
    study = _study(storage_url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["worker"].startswith("worker-0@")
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["worker"].startswith("worker-1@")
    _assert_each_plan_completed_once(storage_url, outcome)
    # The retried plan keeps its place in the search; only its trial number moved.
    assert _same_records(outcome, single_process)


def test_batches_reach_the_objective_whole(model) -> None:
    """The objective sees the references, the population, each generation and each Bayes round
    as one batch each, so workers can score them together."""
    from qradaptor.models.structure import inspect_model
    from qradaptor.search.evolve import run_nsga2
    from qradaptor.search.pipeline import search_space

    space, table, kwargs = search_space(inspect_model(model), CONFIG)
    sizes: list[int] = []

    class Batched:
        def __call__(self, plan):
            raise AssertionError("a batch objective is called with batches")

        def many(self, plans):
            sizes.append(len(plans))
            return [float(sum(s.bits for s in p.layers.values())) for p in plans]

    run_nsga2(
        Batched(), space, table, CONFIG.budget, population=4, offspring=3, generations=2, plan_kwargs=kwargs
    )
    assert sizes[0] == 4 and all(1 <= s <= 3 for s in sizes[1:]) and len(sizes) == 3
