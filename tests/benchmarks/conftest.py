"""``run_benchmark``: a script of benchmarks/ run as a user would, for the tests of what it refuses;
``load_benchmark``: a script imported as a module, for the tests of its functions."""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _finish(exited: SystemExit) -> int:
    """The exit status Python gives a script that raised ``exited``, printing a message as it would."""
    if exited.code is None or isinstance(exited.code, int):
        return exited.code or 0
    print(exited.code, file=sys.stderr)
    return 1


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
def run_benchmark(capfd, monkeypatch) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_benchmark(SCRIPT, *ARGS)``: ``python benchmarks/SCRIPT ARGS`` as a user runs it, from
    benchmarks/ (the scripts import their neighbours), its output and exit status as a finished
    process gives them; an uncaught exception is a traceback on stderr and status 1.

    The script runs as ``__main__`` in this process, not in a child: each child spent about 3 s
    importing torch before its first check, about a minute of CI over these tests."""

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        path = ROOT / "benchmarks" / script
        monkeypatch.chdir(ROOT / "benchmarks")
        monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        threads = torch.get_num_threads()  # the scripts set their own
        capfd.readouterr()
        try:
            runpy.run_path(str(path), run_name="__main__")
            code = 0
        except SystemExit as exited:
            code = _finish(exited)
        except Exception:  # noqa: BLE001 - reported as the interpreter would, for the test to judge
            traceback.print_exc()
            code = 1
        finally:
            torch.set_num_threads(threads)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([sys.executable, str(path), *args], code, out, err)

    return run
