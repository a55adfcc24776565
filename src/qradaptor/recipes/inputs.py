"""What a user names, read and checked before anything heavy loads: a model's structure from
its config, a plan (file or ``uniform:BITS:RANK``), a sensitivity table, a device, a file or a
folder to write.

The verbs' recipes (``recipes/search.py``, ``recipes/train.py``) and the CLI share them; they
live in the library so that a recipe runs in-process without the command line. Messages name
the option (``--plan``, ``--output``) because a user's mistake is what they report.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qradaptor.models.sources import ResolvedSource
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan
    from qradaptor.sensitivity_table import SensitivityTable

DEVICES = ("auto", "cpu", "cuda")
"""What --device accepts."""
_SHORTHAND = re.compile(r"^uniform:(\d+):(\d+)$")


def load_structure(model: str | None) -> tuple[ResolvedSource, ModelStructure]:
    """The resolved source and structure of ``model`` from its config alone (no weights).

    Raises:
        ValueError: if the source does not exist, is not a causal LM, or can't be mapped.
    """
    from qradaptor.models.loading import load_config
    from qradaptor.models.sources import resolve_source
    from qradaptor.models.structure import structure_from_config

    resolved = resolve_source(model)
    return resolved, structure_from_config(load_config(model))


def parse_int_list(text: str, option: str) -> list[int]:
    """``"4,4,2"`` -> [4, 4, 2]; raises ValueError naming ``option`` on anything else."""
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise ValueError(f"{option} must be integers separated by commas (e.g. 4,4,2), got {text!r}")
    return [int(p) for p in parts]


def parse_shorthand(text: str) -> tuple[int, int]:
    """``"uniform:4:16"`` -> (4, 16); raises ValueError if malformed or out of range."""
    from qradaptor.plan import check_bits, check_rank

    match = _SHORTHAND.match(text)
    if match is None:
        raise ValueError(f"--plan shorthand must be uniform:BITS:RANK (e.g. uniform:4:16), got {text!r}")
    bits = check_bits(int(match.group(1)), f"BITS of --plan {text}")
    return bits, check_rank(int(match.group(2)), f"RANK of --plan {text}")


def read_plan(spec: str) -> Plan | tuple[int, int]:
    """The plan named by ``spec``: a Plan read from a JSON file, or (bits, rank) of ``uniform:BITS:RANK``.

    Called before the model is loaded, so a bad --plan fails at once; the caller turns a
    (bits, rank) into a uniform plan for the model, and validates either against it.

    Raises:
        ValueError: if the file is missing, not a plan, or the shorthand is malformed.
    """
    from qradaptor.plan import Plan

    path = Path(spec).expanduser()
    if not path.exists() and spec.startswith("uniform:"):
        return parse_shorthand(spec)
    if not path.exists():
        raise ValueError(
            f"--plan file {spec!r} does not exist (expected a plan JSON file or uniform:BITS:RANK)"
        )
    if not path.is_file():
        raise ValueError(f"--plan {spec!r} is not a file (expected a plan JSON file or uniform:BITS:RANK)")
    try:
        return Plan.from_json(path.read_text(encoding="utf-8"))
    except ValueError as err:  # name the file: the library message only names the field
        raise ValueError(f"--plan file {spec!r}: {err}") from None


def check_output(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """``path`` as a Path if a file may be written there, else ValueError naming why.

    Raises:
        ValueError: if ``path`` exists and ``force`` is False, names a folder, or its folder
            does not exist or is not writable.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"output {os.fspath(path)!r} is a folder; give a file name")
    if target.exists() and not force:
        raise ValueError(f"output {os.fspath(path)!r} already exists; pass --force to overwrite it")
    if target.parent.exists() and not target.parent.is_dir():
        raise ValueError(
            f"output {os.fspath(path)!r} cannot be written: {str(target.parent)!r} is a file, not a folder"
        )
    if not target.parent.is_dir():
        raise ValueError(
            f"output {os.fspath(path)!r} cannot be written: folder {str(target.parent)!r} does not exist"
        )
    _probe_writable(target.parent, "output", os.fspath(path))
    return target


def _probe_writable(folder: Path, option: str, given: str) -> None:
    """Raises ValueError unless a file can be created in ``folder`` (a real write: permissions,
    read-only mounts and full quotas all show up, which ``os.access`` misses for root)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".qra-probe-", dir=folder)
    except OSError as err:
        raise ValueError(
            f"{option} {given!r} cannot be written: folder {str(folder)!r} is not writable "
            f"({err.strerror or type(err).__name__})"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_output_dir(path: str | os.PathLike[str], option: str = "--output") -> Path:
    """``path`` as a Path if a folder may be created or written there, else ValueError naming why.

    Checked before any model is loaded, so a bad location fails at once, not after the work.

    Raises:
        ValueError: if ``path`` is a file, lies under a file, or its nearest existing folder
            is not writable.
    """
    folder = Path(path).expanduser()
    given = os.fspath(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {given!r} is a file; give a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {given!r} cannot be created: {str(existing)!r} is a file, not a folder")
    _probe_writable(existing, option, given)
    return folder


def write_text_atomic(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Path:
    """Writes ``text`` to ``path`` through a temp file in the same folder and ``os.replace``.

    A crash never leaves a half-written file under ``path``.

    Raises:
        ValueError: as :func:`check_output`.
        OSError: if the folder is not writable.
    """
    from qradaptor.atomic import write_text

    return write_text(check_output(path, force=force), text)


def check_device(device: str) -> None:
    """Raises ValueError unless ``device`` is one of ``DEVICES`` (no torch import: fails fast)."""
    if device not in DEVICES:
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")


def resolve_device(device: str) -> str:
    """ "cpu" or "cuda" for a checked ``device``: auto picks cuda when available.

    Raises:
        ValueError: if cuda is asked for and not available.
    """
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available here")
    return device


def read_sensitivity(path: str, signature: str | None = None) -> SensitivityTable:
    """The table of a ``qra profile`` sensitivity.json given as --sensitivity.

    Args:
        path: the file.
        signature: the model's structure signature; a file stamped for another model is refused.

    Raises:
        ValueError: if the file is missing, is not a sensitivity table, or was profiled on a
            model of another signature.
    """
    from qradaptor.sensitivity_table import SensitivityTable

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"--sensitivity file {path!r} does not exist (expected a sensitivity.json of qra profile)"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        table = SensitivityTable.from_dict(data)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--sensitivity file {path!r} is not a sensitivity table: {err}") from None
    stamped = data.get("model_signature")
    if signature is not None and stamped is not None and stamped != signature:
        raise ValueError(
            f"--sensitivity file {path!r} was profiled on another model (signature {stamped}, "
            f"this model's is {signature}): profile this model with qra profile"
        )
    return table
