"""benchmarks/selection_loss.py refuses bad arguments before it loads the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "selection_loss.py"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--windows", "6", "a=uniform:4:16"], "--windows must be a positive multiple of 4, got 6"),
        (["a.json"], "plans are NAME=PLAN.json, got 'a.json'"),
        (["a=/nonexistent/plan.json"], "does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(args: list[str], says: str) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
    assert "Loading weights" not in run.stderr
