"""One search per study: a claim in the storage that a second ``qra search`` on the same study meets.

A run folder's own ``study.db`` is guarded by the folder's lock (``qradaptor.lock``); a study
in a shared storage (``--storage postgresql://...``) can be reached from many folders and
machines, so its claim lives in the storage itself: a marker study named ``<study>:owner``.
Creating a study under a taken name fails in one transaction (the name is unique in the
table), so of two searches that start together exactly one creates it. Its user attrs hold
the owner's PID, host and a heartbeat the owner renews; a claim whose owner is dead (a PID
gone on this host, or a heartbeat older than ``STALE_SECONDS`` from another host) is taken
over, so a search killed with -9 can be resumed at once from the same host.

Workers never claim: they serve the owner's queue.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

OWNER_SUFFIX = ":owner"
"""The marker study of study S is named S + OWNER_SUFFIX."""
BEAT_SECONDS = 20.0
"""The owner renews its heartbeat this often."""
STALE_SECONDS = 120.0
"""A claim from another host whose heartbeat is older than this is taken for dead."""


def _alive(holder: dict[str, Any], now: float) -> bool:
    """Whether the claim's owner still runs: its PID on this host, else a recent heartbeat."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return now - float(holder.get("beat", 0.0)) < STALE_SECONDS


def _holder(storage: Any, study_id: int) -> dict[str, Any]:
    try:
        return dict(storage.get_study_user_attrs(study_id))
    except KeyError:  # deleted meanwhile
        return {}


class StudyClaim:
    """Holds the claim on ``study`` while in the ``with`` block (see the module docstring).

    Example:
        >>> with StudyClaim(open_storage(url), "qradaptor"):
        ...     run(...)

    Raises:
        ValueError: on entry, when a live search holds the study; names its PID and host.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, study_name: str, verb: str = "qra search"
    ) -> None:
        """Nothing is claimed until ``acquire`` (or ``with``).

        Args:
            storage: the opened storage (``queue.open_storage``); the study need not exist yet.
            study_name: the study to claim.
            verb: who claims, for the message a second search gets.
        """
        self.study_name = study_name
        self.verb = verb
        self.name = study_name + OWNER_SUFFIX
        self._storage = storage
        self._id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> StudyClaim:
        """Takes the claim, taking over a dead owner's; starts the heartbeat."""
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        from qradaptor.distributed.queue import retrying

        for _ in range(5):
            try:
                self._id = retrying(
                    lambda: self._storage.create_new_study([StudyDirection.MINIMIZE], study_name=self.name)
                )
                break
            except DuplicatedStudyError:
                pass
            try:
                held = retrying(lambda: self._storage.get_study_id_from_name(self.name))
            except KeyError:  # released meanwhile: try again
                continue
            holder = _holder(self._storage, held)
            for _ in range(15):  # made an instant ago: its owner is writing who it is
                if holder:
                    break
                time.sleep(0.2)
                holder = _holder(self._storage, held)
            if holder and _alive(holder, time.time()):
                raise ValueError(
                    f"study {self.study_name!r} is being searched by {holder.get('verb', 'qra search')} "
                    f"(PID {holder.get('pid')} on host {holder.get('host')}); two searches on one study "
                    "would score every plan twice: wait for it to finish, stop it, or use another --study"
                )
            try:  # dead owner: remove its claim by id, so a claim re-made meanwhile is not removed
                retrying(lambda held=held: self._storage.delete_study(held))
            except KeyError:
                pass
        else:
            raise ValueError(f"could not claim study {self.study_name!r}: its claim keeps changing")
        self._write(since=time.time())
        self._thread = threading.Thread(target=self._beat, name=f"claim-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _write(self, **extra: Any) -> None:
        from qradaptor.distributed.queue import retrying

        record = {"pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb, "beat": time.time()}
        for key, value in {**record, **extra}.items():
            retrying(lambda key=key, value=value: self._storage.set_study_user_attr(self._id, key, value))

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed beat matters only if all until STALE_SECONDS are
                pass

    def release(self) -> None:
        """Stops the heartbeat and removes the claim."""
        if self._id is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._storage.delete_study(self._id)
        except KeyError:
            pass
        self._id = None

    def __enter__(self) -> StudyClaim:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
