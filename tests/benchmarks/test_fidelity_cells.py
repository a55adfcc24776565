"""benchmarks/fidelity_cells.py: the knapsack objective of a plan in its own quantiser's profile,
and bad arguments refused before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qradaptor.plan import Plan
from qradaptor.sensitivity_table import SensitivityTable

from .conftest import load_benchmark


def _module():
    return load_benchmark("fidelity_cells")


def _table(**kwargs) -> SensitivityTable:
    kl = ((0.5, 0.1, 0.01), (0.3, 0.2, 0.02), (0.4, 0.05, 0.001))
    return SensitivityTable(bits=(2, 3, 4), kl=kl, tokens=8, group_size=64, quant_method="hqq", **kwargs)


def test_the_summed_kl_is_read_from_the_profile_of_the_plans_own_quantiser() -> None:
    summed_kl = _module().summed_kl
    plan = Plan.from_lists([2, 4, 16], [8, 8, 8], group_size=64)  # 16 bits: nothing lost
    assert summed_kl(plan, [_table(double_quant=True), _table()]) == pytest.approx(0.5 + 0.02)
    dq = Plan.from_lists([3, 3, 3], [8, 8, 8], group_size=64, double_quant=True)
    assert summed_kl(dq, [_table(), _table(double_quant=True)]) == pytest.approx(0.1 + 0.2 + 0.05)
    assert summed_kl(Plan.from_lists([8, 4, 4], [8, 8, 8]), [_table()]) is None  # 8 bits not profiled
    assert summed_kl(dq, [_table()]) is None  # no profile of its quantiser


def _cell(root: Path, label: str, seed: int, plan: Plan, wiki: float) -> None:
    folder = root / label / f"seed{seed}"
    (folder / "train").mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps({"label": label, "state": "done", "method": "lora"}))
    (folder / "train" / "plan.json").write_text(plan.to_json())
    (folder / "train" / "train.json").write_text(json.dumps({"memory": {"avg_bits": 4.5}}))
    results = [
        {"task": "ppl_wiki", "metric": "ppl", "value": wiki},
        {"task": "ppl_lambada", "metric": "ppl", "value": 2 * wiki},
    ]
    (folder / "eval.json").write_text(json.dumps({"results": results}))


def test_done_cells_of_one_plan_are_one_row(tmp_path: Path) -> None:
    plan = Plan.from_lists([4, 4, 4], [16, 16, 16])
    _cell(tmp_path, "qlora-4", 0, plan, 30.0)
    _cell(tmp_path, "qlora-4", 1, plan, 32.0)
    _cell(tmp_path, "qra@4.5bits", 0, plan, 31.0)
    _cell(tmp_path, "other", 0, Plan.from_lists([4, 3, 4], [16, 16, 16]), 40.0)
    found = _module().done_plans(tmp_path)
    row = found[plan.plan_hash]
    assert (
        len(found) == 2 and row["labels"] == {"qlora-4", "qra@4.5bits"} and row["wiki"] == [30.0, 32.0, 31.0]
    )
    assert row["budget"] == "4.5bits"  # a method's plan by its stored bits


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--experiment", "/nonexistent", "--profiles", "."], "--experiment must be a folder"),
        (["--experiment", ".", "--profiles", ".", "--windows", "6"], "--windows must be a positive multiple"),
        (["--experiment", ".", "--profiles", "."], "done plan(s) of our quantiser; Kendall tau needs two"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(args: list[str], says: str, run_benchmark) -> None:
    run = run_benchmark("fidelity_cells.py", *args, timeout=60)
    assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
    assert "Loading weights" not in run.stderr
