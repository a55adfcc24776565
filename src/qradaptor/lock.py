"""One writer per run folder: an advisory lock that ``qra search`` and ``qra train`` hold while they run.

The lock is ``fcntl.flock`` on ``RUN/.qra.lock``. The kernel drops it when its process ends,
however it ends (kill -9 included), so a killed run never leaves a lock behind that a
resume would have to clear. The file records who holds it (PID, host, verb, start time),
so a second writer is refused with one line naming the holder.

``flock`` is advisory: it stops other ``qra`` processes, not other programs. On network file
systems it is only as good as the file system's lock support (NFSv4 supports it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".qra.lock"
"""The lock's file name inside a run folder."""


def _holder_text(path: Path) -> str:
    """Who holds the lock at ``path``, as recorded there (the record may be missing or partial)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another process (its PID is not recorded yet)"
    since = holder.get("since")
    started = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"{holder.get('verb', 'qra')} (PID {holder['pid']} on host {holder.get('host', '?')}{started})"


class RunLock:
    """Holds ``folder/.qra.lock`` exclusively while in the ``with`` block; refuses if another process does.

    Example:
        >>> with RunLock(run_dir, "qra train"):
        ...     train(...)

    Raises:
        ValueError: on entry, when another process holds the folder's lock; the message names
            its PID, host and verb.
    """

    def __init__(self, folder: str | os.PathLike[str], verb: str) -> None:
        self.folder = Path(folder).expanduser()
        self.verb = verb
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._made = False

    def acquire(self) -> RunLock:
        """Creates the folder if needed and takes the lock (see the class docstring)."""
        import fcntl

        self._made = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._made = False
            raise ValueError(
                f"run folder {str(self.folder)!r} is in use by {_holder_text(self.path)}; "
                "one folder takes one writer at a time: wait for it to finish or stop it, or use another"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empties the record and drops the lock.

        The file stays (removing it would race a new holder), unless this lock made the folder
        and nothing else was written there: a run refused early leaves no folder behind.
        """
        import fcntl

        if self._fd is None:
            return
        try:
            if self._made and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                self.path.unlink()
                self.folder.rmdir()
            else:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
