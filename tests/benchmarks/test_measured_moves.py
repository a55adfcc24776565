"""benchmarks/measured_moves.py refuses a profile of another space before it loads the model."""

from __future__ import annotations

import json
from pathlib import Path


def test_a_profile_without_double_quantisation_is_refused(tmp_path: Path, run_benchmark) -> None:
    from qradaptor.sensitivity_table import SensitivityTable

    row = (0.1, 0.05, 0.01, 0.005, 0.001, 0.0)
    table = SensitivityTable((2, 3, 4, 5, 6, 8), (row,) * 30, tokens=4096, group_size=64, quant_method="hqq")
    file = tmp_path / "sensitivity.json"
    file.write_text(json.dumps(table.to_dict()))
    run = run_benchmark("measured_moves.py", "--sensitivity", str(file))
    assert run.returncode != 0 and "double_quant False" in run.stderr, run.stderr[-2000:]
