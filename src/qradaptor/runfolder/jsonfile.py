"""Reading a run folder's JSON records: one error naming the file for anything wrong."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ValueError naming the file when it is missing or not JSON."""
    if not path.is_file():
        raise ValueError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def need(data: Mapping[str, Any], key: str, path: Path | str) -> Any:
    """``data[key]``; ValueError naming the file when ``data`` is no object or lacks ``key``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object holding {key!r}, got {type(data).__name__}")
    if key not in data:
        raise ValueError(f"{path}: key {key!r} is missing")
    return data[key]


def number(value: Any) -> float | None:
    """A finite float, or None (JSON null, NaN, inf, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def check_format(data: Mapping[str, Any], expected: int, path: Path | str) -> None:
    """Refuses a record of a format newer than ``expected`` (an absent format is the first)."""
    found = data.get("format", 1)
    if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= expected:
        raise ValueError(
            f"{path}: format {found!r} is not supported (this qradaptor reads formats 1..{expected}; "
            "a newer qradaptor wrote it?)"
        )
