"""benchmarks/selection_loss.py refuses bad arguments before it loads the model."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--windows", "6", "a=uniform:4:16"], "--windows must be a positive multiple of 4, got 6"),
        (["a.json"], "plans are NAME=PLAN.json, got 'a.json'"),
        (["a=/nonexistent/plan.json"], "does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(args: list[str], says: str, run_benchmark) -> None:
    run = run_benchmark("selection_loss.py", *args)
    assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
    assert "Loading weights" not in run.stderr
