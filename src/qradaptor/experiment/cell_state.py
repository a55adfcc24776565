"""cell.json as ``qra experiment``'s runner moves a cell along: written from the ``Cell`` and its
state, read back to see what an earlier run left.

The record itself (its fields, format and checks) is ``runfolder/cell.py``'s.
"""

from __future__ import annotations

import os

from qradaptor.experiment.commands import Cell
from qradaptor.redact import redact
from qradaptor.runfolder.cell import CellRecord


def write_cell_record(
    cell: Cell,
    state: str,
    error: str | None = None,
    *,
    fingerprint: str | None = None,
    reused_from: str | None = None,
    reused_run: str | None = None,
) -> None:
    """cell.json: the cell's label, seed, search folder, commands and state, and for a done cell
    its fingerprint and the twin it reused, if any."""
    search = None
    if cell.search is not None:
        search = os.path.relpath(cell.search.folder, cell.folder)
    CellRecord(
        experiment=cell.experiment,
        label=cell.label,
        method=cell.method,
        budget=cell.budget,
        seed=cell.seed,
        search=search,
        commands=tuple(redact(c) for c in cell.commands),  # a storage URL's password: not on disk
        state=state,
        error=error,
        fingerprint=fingerprint,
        reused_from=reused_from,
        reused_run=reused_run,
    ).save(cell.folder)


def recorded(cell: Cell) -> CellRecord | None:
    """The cell's cell.json as it is on disk; None when missing or unreadable."""
    try:
        return CellRecord.load(cell.folder)
    except ValueError:
        return None
