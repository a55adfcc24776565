"""``run_benchmark``: a script of benchmarks/ run as a user would, for the tests of what it refuses;
``load_benchmark``: a script imported as a module, for the tests of its functions."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/SCRIPT ARGS`` from benchmarks/ (the scripts import their neighbours),
    with this checkout's src first on the path; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT / "benchmarks",
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py imported as the module NAME (without running its main); benchmarks/ goes
    on the path first, as for a script run there, so a script that imports a neighbour loads."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_benchmark() -> Callable[..., subprocess.CompletedProcess[str]]:
    return _run
