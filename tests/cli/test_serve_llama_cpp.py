"""``--serve llama.cpp`` on qra plan --baseline knapsack, qra search and qra profile: only plans
whose block linears GGUF holds unchanged (symmetric codes at group 32 as Q4_0/Q5_0/Q8_0, or F16),
and profiles of that quantiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qradaptor.cli.search_options import servable_bits
from qradaptor.plan import Plan

RULE = "llama.cpp serves as planned only --quant-method symmetric, --group-size 32, --bits from 4,5,8,16"


@pytest.fixture(scope="module")
def profile(tiny_model_dir, tmp_path_factory) -> Path:
    """A sensitivity.json of the tiny Llama at bits 4,5,8 (group 32, symmetric)."""
    from qradaptor.cli import main

    folder = tmp_path_factory.mktemp("profile")
    argv = [str(tiny_model_dir), "--bits", "4,5,8", "--samples", "3", "--seq-len", "8", "--device", "cpu"]
    quant = ["--group-size", "32", "--quant-method", "symmetric"]
    assert main(["profile", *argv, *quant, "-o", str(folder)]) == 0
    return folder / "sensitivity.json"


def _knapsack(cli, model, profile, budget: str, *extra: object) -> tuple[int, str, str]:
    argv = ["--baseline", "knapsack", "--budget", budget, "--sensitivity", profile, "--rank", "0"]
    return cli("plan", model, *argv, "--serve", "llama.cpp", *extra)


@pytest.mark.parametrize("budget", ["4.9bits", "7bits", "12bits"])
def test_knapsack_picks_llama_cpp_s_quantiser_and_bits(cli, tiny_model_dir, profile, budget) -> None:
    from qradaptor.export.llama_cpp_constraints import check_llama_cpp_plan
    from qradaptor.memory import plan_memory
    from qradaptor.models.loading import load_config
    from qradaptor.models.structure import structure_from_config

    code, out, err = _knapsack(cli, tiny_model_dir, profile, budget)  # no quantiser options given
    assert code == 0, err
    plan = Plan.from_json(out)
    assert (plan.quant_method, plan.group_size, plan.double_quant) == ("symmetric", 32, False)
    assert set(plan.block_bits()) <= {4, 5, 8, 16} and len(set(plan.block_bits())) > 1
    structure = structure_from_config(load_config(str(tiny_model_dir)))
    check_llama_cpp_plan(plan, structure)
    assert plan_memory(structure, plan).avg_bits <= float(budget.removesuffix("bits"))


def test_knapsack_accepts_llama_cpp_s_options_given(cli, tiny_model_dir, profile) -> None:
    extra = ["--quant-method", "symmetric", "--group-size", "32", "--bits", "4,8"]
    code, out, err = _knapsack(cli, tiny_model_dir, profile, "6bits", *extra)
    assert code == 0, err
    assert set(Plan.from_json(out).block_bits()) == {4, 8}


@pytest.mark.parametrize(
    ("extra", "given"),
    [
        (["--quant-method", "hqq"], "--quant-method hqq"),
        (["--quant-method", "rtn", "--group-size", "32"], "--quant-method rtn"),
        (["--group-size", "64"], "--group-size 64"),
        (["--bits", "3,4,8"], "--bits 3,4,8"),
        (["--bits", "4,6"], "--bits 4,6"),
        (["--double-quant"], "--double-quant"),
    ],
)
def test_knapsack_refuses_what_llama_cpp_would_re_quantise_before_loading(
    cli, tmp_path, extra, given
) -> None:
    missing = tmp_path / "no-such-model"  # refused before the model (or the profile) is looked at
    code, _, err = _knapsack(cli, missing, tmp_path / "no.json", "6bits", *extra, "-o", tmp_path / "p")
    assert code == 2 and f"{given} with --serve llama.cpp: {RULE}" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_knapsack_refuses_a_choice_of_group_sizes(cli, tiny_model_dir, profile) -> None:
    code, _, err = _knapsack(cli, tiny_model_dir, f"{profile},{profile}", "6bits")
    assert code == 2 and "with --serve llama.cpp: GGUF blocks are 32 weights, so give one profile" in err


def test_without_serve_the_defaults_stay_hqq_at_group_64(cli, tiny_model_dir) -> None:
    code, out, err = cli("plan", tiny_model_dir, "--uniform", "4:0")
    assert code == 0, err
    plan = Plan.from_json(out)
    assert (plan.quant_method, plan.group_size) == ("hqq", 64)


def test_search_choices_with_serve_llama_cpp() -> None:
    from qradaptor.export.serve_targets import quantiser

    assert servable_bits("llama.cpp", None, (2, 3, 4, 8), "module", None, "paper") == (4, 5, 8, 16)
    assert servable_bits("llama.cpp", "4,16", (4, 16), "block", 4, "halving", 32, "symmetric") == (4, 16)
    assert quantiser("llama.cpp", None, None) == (32, "symmetric")
    assert quantiser(None, None, None) == (64, "hqq") and quantiser("vllm", 32, "rtn") == (32, "rtn")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bits", "3,4"], f"--bits 3,4 with --serve llama.cpp: {RULE}"),
        (["--quant-method", "hqq"], f"--quant-method hqq with --serve llama.cpp: {RULE}"),
        (["--group-size", "64"], f"--group-size 64 with --serve llama.cpp: {RULE}"),
        (["--double-quant"], f"--double-quant with --serve llama.cpp: {RULE}"),
        (["--fixed-bits", "2"], f"--fixed-bits 2 with --serve llama.cpp: {RULE}"),
    ],
)
def test_search_refuses_what_llama_cpp_would_re_quantise_before_loading(
    cli, tmp_path, extra, message
) -> None:
    code, _, err = cli("search", "--budget", "5bits", "--serve", "llama.cpp", *extra, "-o", tmp_path / "s")
    assert code == 2 and message in err and not (tmp_path / "s").exists(), err


def test_search_takes_llama_cpp_s_quantiser_when_none_is_given(tiny_model_dir, tmp_path) -> None:
    """What a --serve llama.cpp search would run (checked before any weight loads)."""
    from qradaptor.recipes.search import prepare
    from qradaptor.recipes.search_options import SearchOptions

    options = SearchOptions(
        model=str(tiny_model_dir), budget="6bits", serve="llama.cpp", output=str(tmp_path / "s"), device="cpu"
    )
    request, _, _ = prepare(options)
    config = request.config
    assert (config.bits, config.group_size, config.quant_method) == ((4, 5, 8, 16), 32, "symmetric")
    assert not config.double_quant and config.tied == ()  # llama.cpp fuses nothing


@pytest.mark.parametrize(("serve", "bits"), [("llama.cpp", (4, 5, 8)), ("vllm", (4, 8))])
def test_profile_with_serve_measures_what_the_engine_s_plans_quantise(
    tiny_model_dir, tmp_path, serve, bits
) -> None:
    from qradaptor.cli import main
    from qradaptor.sensitivity_table import SensitivityTable

    argv = [str(tiny_model_dir), "--samples", "2", "--seq-len", "8", "--device", "cpu", "--serve", serve]
    assert main(["profile", *argv, "-o", str(tmp_path)]) == 0
    table = SensitivityTable.from_dict(json.loads((tmp_path / "sensitivity.json").read_text()))
    # Both engines hold a symmetric fit's codes unchanged: llama.cpp in 32-weight blocks.
    method, group_size = ("symmetric", 32) if serve == "llama.cpp" else ("symmetric", 64)
    assert (table.bits, table.quant_method, table.group_size) == (bits, method, group_size)


@pytest.mark.parametrize(
    ("extra", "given"),
    [
        (["--quant-method", "hqq"], "--quant-method hqq"),
        (["--group-size", "64"], "--group-size 64"),
        (["--bits", "3,4"], "--bits 3,4"),
        (["--double-quant"], "--double-quant"),
    ],
)
def test_profile_refuses_what_llama_cpp_would_re_quantise_before_loading(cli, tmp_path, extra, given) -> None:
    out = tmp_path / "prof"
    code, _, err = cli("profile", tmp_path / "no-such-model", "--serve", "llama.cpp", *extra, "-o", out)
    assert code == 2
    assert f"{given} with --serve llama.cpp: {RULE}" in err
    assert not out.exists()
