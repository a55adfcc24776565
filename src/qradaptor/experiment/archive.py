"""Moving cells aside, so that a run makes them again from the experiment file.

A done cell stays done when its file changes (a default that moved, a label redefined): the
runner skips it, and its results keep standing under its label. That is right for a rerun after
a cut-off, and for a default spelled out (allocation.yaml's knapsack labels gained ``--rank 16``,
the plan they make is the same). It is wrong when a label means something else now: ``qra`` in
configs/main.yaml searched with the paper's strategy in the runs of 2026-11-23 and with the
halving strategy since (issue 20), so its table would mix the two. Which is which can't be read
off the command lines, so the user names the cells: ``qra experiment --redo NAMES`` moves them to
``DIR/archive/STAMP/EXPERIMENT/LABEL/seedK`` (nothing is deleted; the runner, the report and the
twin search look only at ``DIR/EXPERIMENT/LABEL/seedK``) and the run makes them again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qradaptor.experiment.commands import Cell

ARCHIVE = "archive"
"""Folder of DIR that holds the cells moved aside."""


def fresh_stamp(root: Path, now: str) -> str:
    """``now`` (a UTC time stamp), or ``now-2``, ``now-3``, ... when an archive of that name exists
    (two moves in one second)."""
    stamp, n = now, 1
    while (root / ARCHIVE / stamp).exists():
        n += 1
        stamp = f"{now}-{n}"
    return stamp


def archive_cells(cells: Sequence[Cell], root: Path, stamp: str) -> list[Path]:
    """Moves each cell's folder that exists to ``root/archive/stamp/EXPERIMENT/LABEL/seedK``.

    Returns:
        The folders they were moved to (cells without a folder are left out).

    Raises:
        ValueError: when a target is there already (the same stamp used twice), before moving any.
    """
    present = [cell for cell in cells if cell.folder.is_dir()]
    targets = [root / ARCHIVE / stamp / cell.folder.relative_to(root) for cell in present]
    taken = [t for t in targets if t.exists()]
    if taken:
        raise ValueError(f"{taken[0]} exists already; archive the cells under another stamp")
    for cell, target in zip(present, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(cell.folder, target)  # one rename: the cell is either here or there
        if not any(cell.folder.parent.iterdir()):  # a label with no cell left: as if never run
            cell.folder.parent.rmdir()
    return targets
