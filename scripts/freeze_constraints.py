"""Writes constraints.txt: the exact versions of qradaptor's installed dependency closure.

``scripts/install.sh`` installs with ``-c constraints.txt``, so a fresh machine gets the
versions the tests last passed with instead of whatever was released since. Refresh it after
a deliberate upgrade, once the whole test command passes:

    python3 scripts/freeze_constraints.py > constraints.txt

torch (and the CUDA wheels it brings) is left out: install.sh chooses the CPU or the CUDA
build itself, and the GPU machines keep the torch they have.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

EXTRAS = ("test", "plot", "postgres", "tensorboard")
"""The optional dependency groups install.sh installs (and postgres, which CI uses)."""
LEFT_OUT = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
"""Chosen per machine by install.sh, never pinned here."""


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _wanted(requirement: str, extras: set[str]) -> bool:
    """Whether a Requires-Dist line applies: no marker, or an extra we install, or this platform's."""
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    if parsed.marker is None:
        return True
    if any(parsed.marker.evaluate({"extra": extra}) for extra in extras):
        return True
    return parsed.marker.evaluate({"extra": ""})


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """{name: installed version} of ``root``'s dependencies with ``extras``, transitively."""
    seen: dict[str, str] = {}
    todo: list[tuple[str, set[str]]] = [(root, set(extras))]
    while todo:
        name, wanted_extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency of another platform or an extra nobody installed
        for requirement in dist.requires or []:
            if not _wanted(requirement, wanted_extras):
                continue
            dep = _name(requirement)
            if dep in seen or LEFT_OUT.match(dep):
                continue
            try:
                seen[dep] = metadata.version(dep)
            except metadata.PackageNotFoundError:
                continue
            inner = re.search(r"\[([^\]]+)\]", requirement.split(";")[0])
            todo.append((dep, set(inner.group(1).split(",")) if inner else set()))
    return seen


def main() -> int:
    pins = closure("qradaptor", EXTRAS)
    print("# Versions the test command last passed with (scripts/freeze_constraints.py); torch is chosen by")
    print("# scripts/install.sh. Used as: pip install -c constraints.txt ...")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
