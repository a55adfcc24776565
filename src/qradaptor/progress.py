"""Progress that shows everywhere: a bar on a terminal, a line now and then in a log.

tqdm draws a bar by rewriting one line with carriage returns; in a log file, under ``nohup`` or
in CI that is one ever-growing line that nobody sees until the job ends. So on a terminal
``progress_bar`` is a plain tqdm bar, and otherwise the same tqdm object writes a whole line
(what, how far, elapsed, ETA and rate) at most every ``LINE_SECONDS``, plus one at the start
and one at the end, so a long step is never silent.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

LINE_SECONDS = 30.0
"""Least seconds between two progress lines when stderr is not a terminal."""

_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, ETA {remaining}, {rate_fmt}]{postfix}"
"""A log line: no bar, whose width a log can't know."""


_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Terminal escapes tqdm writes to place nested bars (e.g. ESC[A, cursor up): noise in a log."""


class _Lines:
    """A stream wrapper that turns tqdm's carriage-return refreshes into whole lines."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        for part in _CURSOR_MOVES.sub("", text).replace("\r", "\n").split("\n"):
            if part.strip():
                self._stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _line_tqdm() -> type:
    from tqdm import tqdm

    class LineProgress(tqdm):
        """tqdm whose postfix and description changes wait for the next timed line."""

        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description(desc, refresh=False)

    return LineProgress


def progress_bar(
    *,
    total: int | None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    stream: IO[str] | None = None,
) -> Any:
    """A tqdm progress object: a bar on a terminal, periodic lines otherwise, nothing if disabled.

    Args:
        total: Steps in all (None when unknown).
        desc: What is being done, e.g. ``"sensitivity"``.
        unit: What one step is, e.g. ``"plan"``.
        enabled: False shows nothing (``--no-progress``).
        initial: Steps already done (a resumed run).
        leave: Keep the finished bar on a terminal.
        stream: Where to write; default ``sys.stderr`` (looked up at the call, so captured
            output sees it).

    Returns:
        A ``tqdm`` instance (use ``update``, ``set_postfix``, ``close`` or ``with``).
    """
    from tqdm import tqdm

    out = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=True)
    if out.isatty():
        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=out, dynamic_ncols=True
        )
    return _line_tqdm()(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=_Lines(out),
        mininterval=LINE_SECONDS,
        maxinterval=LINE_SECONDS,
        bar_format=_LINE_FORMAT,
        leave=True,  # the closing line is the one that says how long it took
    )
