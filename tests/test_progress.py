"""Tests for qradaptor.progress: lines in a log, a bar on a terminal, nothing when disabled."""

from __future__ import annotations

import io

from qradaptor.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_at_the_start_and_the_end_not_one_per_step() -> None:
    log = io.StringIO()
    with progress_bar(total=50, desc="sensitivity", unit="fit", stream=log) as bar:
        for _ in range(50):
            bar.update()
            bar.set_postfix(loss=1.5)  # waits for the next timed line
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 2
    assert lines[0].startswith("sensitivity: 0/50 fit [00:00 elapsed, ETA ?")
    assert lines[1].startswith("sensitivity: 50/50 fit [") and lines[1].endswith("loss=1.5")


def test_nested_bars_in_a_log_leave_no_cursor_escapes() -> None:
    log = io.StringIO()
    with progress_bar(total=2, desc="search", stream=log) as outer:
        with progress_bar(total=3, desc="screen", stream=log, leave=False) as inner:
            inner.update(3)
        outer.update(2)
    assert "\x1b" not in log.getvalue()
    assert any(line.startswith("screen: 3/3") for line in log.getvalue().splitlines())


def test_a_terminal_gets_a_bar_and_no_progress_gets_nothing() -> None:
    terminal = _Terminal()
    with progress_bar(total=4, desc="train", unit="step", stream=terminal) as bar:
        bar.update(4)
    assert "\r" in terminal.getvalue() and "100%" in terminal.getvalue()
    silent = io.StringIO()
    with progress_bar(total=4, desc="train", stream=silent, enabled=False) as bar:
        bar.update(4)
    assert silent.getvalue() == ""
