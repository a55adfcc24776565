"""benchmarks/reconstruction_error.py refuses a bad --methods before it loads any model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reconstruction_error.py"


@pytest.mark.parametrize(
    ("methods", "bits", "says"),
    [
        ("hqq,symmetric-dq", "4", "applies to rtn and hqq only"),
        ("symmetric", "1,4", "needs bits >= 2"),
        ("foo-dq", "4", "is not one of"),
    ],
)
def test_a_bad_method_is_refused_before_the_model_loads(methods: str, bits: str, says: str) -> None:
    # The model path does not exist: a refusal that names the method came before loading it.
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", methods, "--bits", bits, "--model", "/nonexistent/model"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
    assert "nonexistent" not in run.stderr
