"""benchmarks/fidelity_cells.py: the knapsack objective of a plan in its own quantiser's profile,
and bad arguments refused before the model loads."""

from __future__ import annotations

import json
import shutil
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


CELLS = Path(__file__).resolve().parents[2] / "docs" / "results" / "paper" / "allocation"


def test_done_cells_of_one_plan_are_one_row(tmp_path: Path) -> None:
    """Real cells of the allocation run: two seeds of one uniform plan are one row; NF4's cell is
    not our quantiser's and is left out."""
    for cell in ("qlora-4/seed0", "qlora-4/seed1", "knapsack-dq@4.5bits/seed0", "qlora-nf4/seed0"):
        shutil.copytree(CELLS / cell, tmp_path / cell)
    found = _module().done_plans(tmp_path)
    uniform = Plan.from_json((CELLS / "qlora-4/seed0/train/plan.json").read_text()).plan_hash
    assert len(found) == 2 and found[uniform]["labels"] == {"qlora-4"}
    assert found[uniform]["budget"] == "4.5bits"  # a method's plan by its stored bits
    wiki = [json.loads((CELLS / f"qlora-4/seed{s}/eval.json").read_text())["results"][0] for s in (0, 1)]
    assert found[uniform]["wiki"] == [w["value"] for w in wiki] and {w["task"] for w in wiki} == {"ppl_wiki"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--experiment", "/nonexistent", "--profiles", "."], "--experiment must be a folder"),
        (["--experiment", ".", "--profiles", ".", "--windows", "6"], "--windows must be a positive multiple"),
        (["--experiment", ".", "--profiles", "."], "done plan(s) of our quantiser; Kendall tau needs two"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(args: list[str], says: str, run_benchmark) -> None:
    run = run_benchmark("fidelity_cells.py", *args)
    assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
    assert "Loading weights" not in run.stderr
