"""benchmarks/measured_moves.py refuses a profile of another space before it loads the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "measured_moves.py"


def test_a_profile_without_double_quantisation_is_refused(tmp_path: Path) -> None:
    from qradaptor.sensitivity_table import SensitivityTable

    row = (0.1, 0.05, 0.01, 0.005, 0.001, 0.0)
    table = SensitivityTable((2, 3, 4, 5, 6, 8), (row,) * 30, tokens=4096, group_size=64, quant_method="hqq")
    file = tmp_path / "sensitivity.json"
    file.write_text(json.dumps(table.to_dict()))
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--sensitivity", str(file)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert run.returncode != 0 and "double_quant False" in run.stderr, run.stderr[-2000:]
