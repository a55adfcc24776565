"""Corrupt or truncated files become one clear error naming the file, before anything is built on them.

A safetensors file declares its tensors' offsets in its header; the header is read (no tensor
data) and checked against the file's length, which finds a truncated file in milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def check_safetensors(path: str | os.PathLike[str], what: str) -> None:
    """Raises ValueError unless ``path`` is a whole safetensors file (header read, no tensors).

    Args:
        path: the file.
        what: how the message names it, e.g. "adapter weights".

    Raises:
        ValueError: naming ``what``, the path and what is wrong (missing, truncated, bad header).
    """
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ValueError(f"{what} {os.fspath(path)!r} does not exist")
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type (not ValueError)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{what} {os.fspath(path)!r} is corrupt or truncated ({reason}); write it again"
        ) from None


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The JSON value in ``path``.

    Raises:
        ValueError: naming ``what`` and the path when the file is unreadable or not JSON.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {os.fspath(path)!r} is unreadable or not JSON ({err})") from None
