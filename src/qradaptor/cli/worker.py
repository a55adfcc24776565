"""``qra worker``: serve a search study's proxy evaluations, on this machine or any other."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from qradaptor.cli.common import check_device, resolve_device
from qradaptor.redact import STORAGE_ENV


def worker(
    *,
    storage: str | None = None,
    study: str = "qradaptor",
    device: str = "auto",
    model: str | None = None,
    max_trials: int | None = None,
    idle_exit: float | None = None,
    heartbeat: int = 5,
    grace: int = 30,
    name: str | None = None,
) -> int:
    """Take a search's waiting plans from its study, proxy-tune each, and write the scores back.

    Start as many as the hardware holds, on any machines that reach the storage, next to a
    running `qra search --storage URL --study NAME` (or `--workers N`, which starts local
    ones itself). A worker loads the model the study names, checks its weights and tokens
    against the study, then takes one waiting plan at a time with heartbeats running; a
    worker that dies has its plan retried by another. It exits when the search is finished.

    Args:
        storage: the study's storage: sqlite:////abs/path/study.db or
            postgresql+psycopg2://user@host:5432/db; omitted: the environment variable
            QRADAPTOR_STORAGE (keeps a password out of the command line, which ps shows to all)
        study: the study's name in the storage (qra search --study)
        device: auto (cuda if available), cpu or cuda
        model: load the weights from this path instead of the one the study names (the same
            model at another path on this machine)
        max_trials: exit after scoring this many plans
        idle_exit: exit after this many seconds with no plan to take (default: wait until the
            search is finished)
        heartbeat: seconds between heartbeats; every process of a study must agree
        grace: seconds without a heartbeat after which a plan is taken for lost and retried
        name: this worker's name in the trials it scores (default host:pid)
    """
    from qradaptor.distributed.queue import QueueSettings
    from qradaptor.distributed.worker import run_worker

    check_device(device)
    storage = storage or os.environ.get(STORAGE_ENV)
    if not storage:
        raise ValueError(
            f"give the study's storage: --storage URL, or the environment variable {STORAGE_ENV}"
        )
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"--max-trials must be >= 1, got {max_trials}")
    if idle_exit is not None and idle_exit < 0:
        raise ValueError(f"--idle-exit must be >= 0 seconds, got {idle_exit}")
    settings = QueueSettings(heartbeat_seconds=heartbeat, grace_seconds=grace)
    # The search stops local workers with SIGTERM: let it unwind like Ctrl-C, so a plan in
    # progress goes back to the queue at once instead of after the grace period.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run_worker(
            storage,
            study,
            device=resolve_device(device),
            model=model,
            settings=settings,
            max_trials=max_trials,
            idle_exit=idle_exit,
            name=name,
            log=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        print("worker stopped; its plan in progress went back to the queue", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    peak = f"; peak {summary.peak_memory / 2**20:,.0f} MiB reserved on the GPU" if summary.peak_memory else ""
    print(
        f"worker done: {summary.scored} scored, {summary.failed} failed, "
        f"{summary.duplicates} duplicates skipped in {summary.seconds:.1f} s{peak}"
    )
    return 0


VERB = worker


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, Any]) -> None:
    """Options of ``qra worker``."""
    parser.add_argument("--storage", metavar="URL", help=helps["storage"])
    parser.add_argument("--study", default="qradaptor", metavar="NAME", help=helps["study"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=helps["device"])
    parser.add_argument("--model", metavar="PATH", help=helps["model"])
    parser.add_argument("--max-trials", type=int, metavar="N", help=helps["max_trials"])
    parser.add_argument("--idle-exit", type=float, metavar="S", help=helps["idle_exit"])
    parser.add_argument("--heartbeat", type=int, default=5, metavar="S", help=helps["heartbeat"])
    parser.add_argument("--grace", type=int, default=30, metavar="S", help=helps["grace"])
    parser.add_argument("--name", help=helps["name"])
