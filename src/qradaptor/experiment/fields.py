"""Values of an experiment file, checked: qra options as flags, per-block lists, seeds, names.

Each check raises one ValueError that names where in the file the value was (``where``), the
rule, and the value received.
"""

from __future__ import annotations

import re
from typing import Any

RESERVED = {
    "plan": ("output", "force", "bits", "ranks", "uniform", "baseline"),
    "profile": ("output", "force", "device"),
    "search": ("output", "seed", "budget", "workers", "storage", "study", "device"),
    "train": ("output", "seed", "plan", "method", "resume", "force", "no_progress", "device", "eval_tasks"),
    "eval": ("output", "run", "plan", "adapter", "force", "json", "device"),
}
"""Options each verb gets from the experiment itself, so a file may not set them."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_REPEAT = re.compile(r"^\s*(-?\d+)\s*(?:x\s*(\d+))?\s*$")


KNAPSACK_RESERVED = ("output", "force", "baseline", "budget", "sensitivity", "uniform", "ranks")
"""``qra plan`` options a method's ``knapsack:`` may not set (its --bits are the knapsack's choices)."""


def options_argv(options: Any, verb: str, where: str, reserved: tuple[str, ...] | None = None) -> list[str]:
    """``{batch_size: 32, text: true}`` -> ``["--batch-size", "32", "--text"]``.

    ``reserved``: the options the file may not set, when not the verb's own (``RESERVED``).
    """
    if options is None:
        return []
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a mapping of qra {verb} options, got {options!r}")
    argv: list[str] = []
    for key, value in options.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ValueError(f"{where}: option names are like batch_size, got {key!r}")
        refused = RESERVED[verb] if reserved is None else reserved
        if key in refused:
            raise ValueError(
                f"{where}: {key} is set by qra experiment for every cell; the file may not set it "
                f"(set by it: {', '.join(refused)})"
            )
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be a number, a string, true or a list, got {value!r}")
        else:
            argv += [flag, str(value)]
    return argv


def merged_argv(shared: Any, own: Any, verb: str, where: str) -> list[str]:
    """The shared options with the method's own on top (one flag each, the method's value wins)."""
    options_argv(shared, verb, f"{where} (shared {verb})")
    options_argv(own, verb, f"{where}.{verb}")
    return options_argv({**(shared or {}), **(own or {})}, verb, f"{where}.{verb}")


def expand_per_block(value: Any, where: str) -> str:
    """``4``, ``[4, 4, 2]`` or ``"4x15,2x15"`` -> the comma list ``qra plan --bits`` takes."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, a list or like 4x15,2x15, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) and value.strip():
        out: list[str] = []
        for part in value.split(","):
            match = _REPEAT.match(part)
            if match is None:
                raise ValueError(f"{where} parts are N or NxCOUNT (e.g. 4x15,2x15), got {part!r}")
            out += [match.group(1)] * int(match.group(2) or 1)
        return ",".join(out)
    raise ValueError(f"{where} must be a number, a list or like 4x15,2x15, got {value!r}")


def check_seeds(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(is_count(s) for s in value):
        raise ValueError(f"{where} must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} repeats a seed: {value}")
    return value


def is_count(value: Any) -> bool:
    """An integer >= 0 that is not a bool (YAML's true is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_keys(entry: dict, accepted: tuple[str, ...], where: str) -> None:
    unknown = sorted((k for k in entry if k not in accepted), key=str)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; accepted: {', '.join(accepted)}")


def is_budget(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def check_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{where} must be letters, digits, '.', '_', '+' or '-' (a folder name), got {value!r}"
        )
    return value
