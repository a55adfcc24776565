"""Atomic writes: a file or a folder appears complete under its name, or not at all.

Everything qradaptor writes (plans, results, plots, packed bases, checkpoints, run folders,
exports) is first written under a hidden temporary name in the target's own folder (so the
rename stays on one file system) and then renamed over the target with ``os.replace``. A
crash leaves the previous version, never a half-written one. What appears gets the
permissions the user's umask gives a new file or folder (mkstemp alone would make it private).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """What ``mkdir`` would give a new folder: 0o777 less the umask."""
    return 0o777 & ~_umask()


@contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on a clean exit it is synced and renamed to ``path``.

    The file gets the umask's permissions, as a file opened for writing would (mkstemp makes
    it 0600). On an error the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_file("plan.json") as tmp:
        ...     tmp.write_text(text)
    """
    target = Path(path).expanduser()
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path).expanduser()


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary folder beside ``path``; on a clean exit it replaces ``path``.

    An existing ``path`` is moved aside first and deleted only once the new folder is in
    place (it is put back if the rename fails). On an error the temporary folder is removed.
    """
    final = Path(path).expanduser()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(new_dir_mode())  # mkdtemp makes it 0700
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:  # put the previous folder back
                os.replace(old / final.name, final)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
