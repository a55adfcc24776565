"""An experiment cell's record: DIR/<experiment>/<label>/seed<k>/cell.json.

    cell.json     label, method, budget, seed, search folder, commands and state (``CellRecord``)
    plan.json     the plan its ``qra plan`` step made, for a cell with one
    train/        the cell's ``qra train`` run folder (``train_run``)
    eval.json     its ``qra eval`` records

A cell that reused a finished twin's results (``experiment/reuse.py``) holds copies of its
train/train.json and eval.json, and names it in ``reused_from``; the adapter stays with the twin.

``qra experiment``'s runner writes cell.json as the cell's state changes; the report reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qradaptor.runfolder.jsonfile import check_format, read_json

CELL_FILE = "cell.json"
"""A cell folder's record."""
CELL_PLAN = "plan.json"
"""A cell's own plan, made by its ``qra plan`` step."""
CELL_TRAIN = "train"
"""A cell's training run folder."""
CELL_EVAL = "eval.json"
"""A cell's evaluation records."""
CELL_FORMAT = 1
"""The format of cell.json this code writes."""
STATES = ("pending", "running", "done", "failed", "stopped")
"""The states a cell.json records."""


@dataclass(frozen=True)
class CellRecord:
    """cell.json: what a cell is and how far it got."""

    experiment: str
    """The experiment's name (its folder)."""
    label: str
    """The method's label, e.g. "lora16" or "qra@3.5bits"."""
    method: str
    """The ``qra train --method`` it runs."""
    budget: str | None
    """The search budget, e.g. "3.5bits"; None for an unsearched method."""
    seed: int
    """The training seed."""
    search: str | None
    """The search folder whose plan the cell trains, relative to the cell folder; None: none."""
    commands: tuple[str, ...]
    """Shell lines that reproduce the cell (a storage URL's password hidden)."""
    state: str
    """One of ``STATES``."""
    error: str | None = None
    """Why the cell failed or stopped; None otherwise."""
    fingerprint: str | None = None
    """Digest of what its fine-tune and eval compute (``experiment/reuse.py``); None: not recorded
    (a cell not done, or written before fingerprints were kept)."""
    reused_from: str | None = None
    """The cell whose results it copied instead of fine-tuning, as ``<experiment>/<label>/seed<k>``
    under the output folder; None: it ran its own fine-tune."""
    reused_run: str | None = None
    """That cell's ``qra train`` run folder (adapter, base), relative to this cell's folder: the
    weights its results are of, never copied; None when nothing was reused."""

    def to_dict(self) -> dict[str, Any]:
        """cell.json's JSON object, ``format`` first; the optional fields only when set, so the
        files of cells from before them read back byte for byte."""
        data: dict[str, Any] = {"format": CELL_FORMAT}
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL})
        data["commands"] = list(self.commands)
        data.update({key: getattr(self, key) for key in _OPTIONAL if getattr(self, key) is not None})
        return data

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = CELL_FILE) -> CellRecord:
        """Inverse of ``to_dict``; ValueError naming ``path``, the field and its rule."""
        if not isinstance(data, dict):
            raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
        check_format(data, CELL_FORMAT, path)
        for key, (rule, ok) in _FIELDS.items():
            if key not in data:
                raise ValueError(f"{path}: field {key!r} is missing (cell.json needs {list(_FIELDS)})")
            if not ok(data[key]):
                raise ValueError(f"{path}: field {key!r} must be {rule}, got {data[key]!r}")
        for key in _OPTIONAL:
            if not _str_or_none(data.get(key)):
                raise ValueError(f"{path}: field {key!r} must be a string or null, got {data[key]!r}")
        values = {key: data[key] for key in _FIELDS}
        optional = {key: data.get(key) for key in _OPTIONAL}
        return cls(**{**values, **optional, "commands": tuple(values["commands"])})

    def save(self, folder: Path) -> None:
        """Writes ``folder``/cell.json atomically (the folder is made if missing)."""
        from qradaptor.atomic import write_text

        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / CELL_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> CellRecord:
        """``folder``/cell.json; ValueError naming the file when missing or not a cell record."""
        path = folder / CELL_FILE
        return cls.from_dict(read_json(path), path)


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


_FIELDS: Mapping[str, tuple[str, Callable[[Any], bool]]] = {
    "experiment": ("a string", lambda v: isinstance(v, str)),
    "label": ("a string", lambda v: isinstance(v, str) and v != ""),
    "method": ("a string", lambda v: isinstance(v, str)),
    "budget": ("a string or null", _str_or_none),
    "seed": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "search": ("a string or null", _str_or_none),
    "commands": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)),
    "state": (f"one of {STATES}", lambda v: v in STATES),
    "error": ("a string or null", _str_or_none),
}
"""cell.json's fields: the rule each must keep, and its check."""
_OPTIONAL = ("fingerprint", "reused_from", "reused_run")
"""cell.json's fields that older files lack (they read as None): each a string or null."""
