"""``qra profile --granularity module`` and ``qra plan --baseline knapsack --granularity module``,
in-process on the tiny Llama saved to disk, checked against the library."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qradaptor.export.vllm_constraints import check_vllm_plan, fused_groups
from qradaptor.memory import plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.budget import parse_budget
from qradaptor.search.knapsack import knapsack_plan
from qradaptor.sensitivity_table import SensitivityTable

pytestmark = pytest.mark.usefixtures("one_thread")

QUANT = ["--group-size", "32", "--quant-method", "rtn"]
PROFILE = ["--bits", "2,4,8", "--samples", "2", "--seq-len", "8", "--device", "cpu", *QUANT]


@pytest.fixture(scope="module")
def structure(llama_factory):
    return inspect_model(llama_factory())


@pytest.fixture(scope="module")
def profiles(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """sensitivity.json of the tiny Llama per block and per module (bits 2,4,8, group 32, rtn)."""
    from qradaptor.cli import main

    out = {}
    for granularity in ("block", "module"):
        folder = tmp_path_factory.mktemp(granularity)
        extra = ["--granularity", granularity] if granularity == "module" else []
        assert (
            main(["profile", str(tiny_model_dir), *PROFILE, *extra, "-o", str(folder), "--no-progress"]) == 0
        )
        out[granularity] = folder / "sensitivity.json"
    return out


def test_profile_writes_a_module_table(profiles, structure) -> None:
    record = json.loads(profiles["module"].read_text())
    assert record["granularity"] == "module" and record["modules"] == list(structure.linear_names)
    assert len(record["kl"]) == 3 * 7 and len(record["ranks"]) == 3 * 7
    csv = (profiles["module"].parent / "sensitivity.csv").read_text().splitlines()
    assert csv[0] == "block,module,kl_2bit,kl_4bit,kl_8bit" and csv[1].startswith("0,self_attn.q_proj,")
    # The block profile's file is as it was: no field of the module profile.
    block = json.loads(profiles["block"].read_text())
    assert "granularity" not in block and "modules" not in block and len(block["kl"]) == 3


def test_profile_prints_a_row_per_module_and_refuses_a_bad_granularity(cli, tiny_model_dir, tmp_path) -> None:
    code, out, err = cli("profile", tiny_model_dir, *PROFILE, "--granularity", "module", "-o", tmp_path / "p")
    assert code == 0, err
    assert re.search(r"^ *1\.mlp\.down_proj +\S+ +\S+ +\S+ +\d+$", out, re.MULTILINE)
    assert "x 7 modules x 3 bit-widths" in err  # the cost line counts the module rows
    code, out, err = cli("profile", tiny_model_dir, "--granularity", "layer", "-o", tmp_path / "q")
    assert code == 2 and "invalid choice: 'layer'" in err


def test_module_knapsack_equals_the_library(cli, tiny_model_dir, profiles, structure, tmp_path) -> None:
    target = tmp_path / "k.json"
    argv = ["--baseline", "knapsack", "--budget", "4.2bits", "--granularity", "module", "--rank", "8"]
    code, out, err = cli(
        "plan", tiny_model_dir, *argv, "--sensitivity", profiles["module"], *QUANT, "-o", target
    )
    assert code == 0, err
    plan = Plan.from_json(target.read_text())
    table = SensitivityTable.from_dict(json.loads(profiles["module"].read_text()))
    expected = knapsack_plan(
        structure,
        table,
        parse_budget("4.2bits"),
        rank=8,
        granularity="module",
        group_size=32,
        quant_method="rtn",
        alpha=16.0,
    )
    assert plan == expected.for_model(structure) and plan.granularity == "module"
    assert plan_memory(structure, plan).avg_bits <= 4.2
    assert "wrote plan knapsack-module-4.2bits-r8" in out


def test_serve_vllm_ties_each_fused_group(cli, tiny_model_dir, profiles, structure) -> None:
    argv = ["--baseline", "knapsack", "--budget", "7bits", "--granularity", "module", "--serve", "vllm"]
    code, out, err = cli("plan", tiny_model_dir, *argv, "--sensitivity", profiles["module"], *QUANT)
    assert code == 0, err
    plan = Plan.from_json(out)
    check_vllm_plan(plan, structure)
    for block in range(3):
        for group in fused_groups(structure):
            assert len({plan.spec_for(block, name).bits for name in group}) == 1
    assert {spec.bits for spec in plan.layers.values()} <= {4, 8, 16}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--sensitivity", "MODULE"],
            r"the knapsack at block granularity takes a per-block sensitivity table \(qra profile, the "
            r"default\), got a per-module one \(7 linears x 3 blocks\)",
        ),
        (
            ["--sensitivity", "BLOCK", "--granularity", "module"],
            r"at module granularity takes a per-module sensitivity table \(qra profile --granularity "
            r"module\), got a per-block one \(3 blocks\)",
        ),
        (["--sensitivity", "OTHER", "--granularity", "module"], r"profiled on another model"),
        (["--sensitivity", "MODULE", "--granularity", "module", "--bits", "2,3"], r"lacks bits \[3\]"),
        (
            ["--sensitivity", "MODULE", "--granularity", "module", "--budget", "2.5bits"],
            r"below the smallest plan of the search space: 3 avg bits",
        ),
    ],
)
def test_bad_input_is_one_error_and_writes_nothing(
    cli, tiny_model_dir, profiles, tmp_path, argv, message
) -> None:
    other = tmp_path / "other.json"
    record = json.loads(profiles["module"].read_text())
    other.write_text(json.dumps({**record, "model_signature": "llama:99x7:deadbeef"}))
    files = {"MODULE": str(profiles["module"]), "BLOCK": str(profiles["block"]), "OTHER": str(other)}
    argv = [files.get(a, a) for a in argv]
    budget = [] if "--budget" in argv else ["--budget", "4bits"]
    target = tmp_path / "plan.json"
    code, out, err = cli(
        "plan", tiny_model_dir, "--baseline", "knapsack", *budget, *argv, *QUANT, "-o", target
    )
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not target.exists()


def test_granularity_goes_with_the_knapsack(cli, tiny_model_dir) -> None:
    code, out, err = cli("plan", tiny_model_dir, "--uniform", "4:8", "--granularity", "module")
    assert code == 2 and "--granularity module goes with --baseline knapsack" in err
