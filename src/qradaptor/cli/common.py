"""Pieces shared by the verbs: help from docstrings, byte sizes, renamed options.

Reading and checking what a user names (a model, a plan, a sensitivity table, a device, an
output) is the library's ``recipes/inputs.py``, so that the recipes run without the CLI; the
verbs and the benchmarks import those names from here too.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable
from typing import Any

from qradaptor.recipes.inputs import (  # noqa: F401  (re-exported for the verbs and benchmarks)
    DEVICES,
    check_device,
    check_output,
    check_output_dir,
    load_structure,
    parse_int_list,
    parse_shorthand,
    read_plan,
    read_sensitivity,
    resolve_device,
    write_text_atomic,
)

VERB_DEST = "_verb"
"""Namespace attribute holding the chosen verb's name."""
DEBUG_DEST = "_debug"
"""Namespace attribute of the --debug flag."""
QUANT_METHODS = ("rtn", "hqq", "symmetric")
"""Copy of ``qradaptor.quant.quantizer.QUANT_METHODS``, which loads torch (a test checks they agree)."""
_UNITS = ("KiB", "MiB", "GiB", "TiB")


def docstring_help(function: Callable[..., Any]) -> tuple[str, str, dict[str, str]]:
    """Splits a Google-style docstring into (summary line, description, {arg: help}).

    The description is everything before ``Args:``; each ``name: text`` entry of the Args
    section (continuation lines indented deeper) becomes that argument's help.
    """
    doc = inspect.cleandoc(function.__doc__ or "")
    head, _, rest = doc.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    current: str | None = None
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break  # Returns:, Raises:, ...
        entry = re.match(r"^ {4}(\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            helps[current] = entry.group(2)
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return head.splitlines()[0] if head else "", head.strip(), helps


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units: 512 B, 1.50 KiB, 23.4 MiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def renamed_option(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Makes ``old`` (hidden from --help) a one-line error naming ``new``.

    One vocabulary across verbs: ``--method`` is qra train's training method, so the quantiser
    of qra search and qra profile is ``--quant-method``, as in qra plan.
    """

    class Renamed(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
            parser.error(f"{old} is now {new} here ({old} names qra train's training method)")

    parser.add_argument(
        old, action=Renamed, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
