"""``--serve vllm`` on qra plan --baseline knapsack and qra search: only plans vLLM serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from qradaptor.cli.search_options import servable_bits
from qradaptor.plan import Plan

QUANT = ["--group-size", "32", "--quant-method", "rtn"]


@pytest.fixture(scope="module")
def profile(tiny_model_dir, tmp_path_factory) -> Path:
    """A sensitivity.json of the tiny Llama at bits 2,4,8 (group 32, rtn)."""
    from qradaptor.cli import main

    folder = tmp_path_factory.mktemp("profile")
    argv = [str(tiny_model_dir), "--bits", "2,4,8", "--samples", "3", "--seq-len", "8", "--device", "cpu"]
    assert main(["profile", *argv, *QUANT, "-o", str(folder)]) == 0
    return folder / "sensitivity.json"


def _knapsack(cli, model, profile, budget: str, *extra: str) -> tuple[int, str, str]:
    argv = ["--baseline", "knapsack", "--budget", budget, "--sensitivity", profile, "--rank", "0"]
    return cli("plan", model, *argv, *QUANT, *extra)


def test_knapsack_keeps_to_what_vllm_serves(cli, tiny_model_dir, profile) -> None:
    from qradaptor.export.vllm_constraints import check_vllm_plan
    from qradaptor.models.loading import load_config
    from qradaptor.models.structure import structure_from_config

    code, out, err = _knapsack(cli, tiny_model_dir, profile, "4.4bits")
    assert code == 0, err
    assert 2 in Plan.from_json(out).block_bits()  # unconstrained: 3 + 5 + 5 bits a weight at group 32
    code, _, err = _knapsack(cli, tiny_model_dir, profile, "4.4bits", "--serve", "vllm")
    assert code == 2 and "smallest plan" in err  # 4 bits at group 32 store 5 a weight
    code, out, err = _knapsack(cli, tiny_model_dir, profile, "5.5bits", "--serve", "vllm")
    assert code == 0, err
    plan = Plan.from_json(out)
    assert set(plan.block_bits()) <= {4, 8, 16} and 4 in plan.block_bits()
    check_vllm_plan(plan, structure_from_config(load_config(str(tiny_model_dir))))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--bits", "2,4,8"],
            "--bits 2,4,8 with --serve vllm: vLLM serves compressed-tensors linears at 4 or 8",
        ),
        (["--embed-bits", "8"], "--embed-bits 8 with --serve vllm: vLLM serves a 16-bit embedding and head"),
    ],
)
def test_knapsack_refuses_what_vllm_cannot_serve(
    cli, tiny_model_dir, profile, tmp_path, extra, message
) -> None:
    code, _, err = _knapsack(
        cli, tiny_model_dir, profile, "6bits", "--serve", "vllm", *extra, "-o", tmp_path / "p"
    )
    assert code == 2 and message in err and not (tmp_path / "p").exists(), err


def test_serve_goes_with_the_knapsack_only(cli, tiny_model_dir) -> None:
    code, _, err = cli("plan", tiny_model_dir, "--uniform", "4:0", "--serve", "vllm")
    assert code == 2 and "--serve goes with --baseline knapsack" in err


def test_search_choices_with_serve_vllm() -> None:
    assert servable_bits("vllm", None, (2, 3, 4, 8), "block", None) == (4, 8, 16)
    assert servable_bits("vllm", "4,16", (4, 16), "block", 4) == (4, 16)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bits", "3,4"], "--bits 3,4 with --serve vllm"),
        (
            ["--granularity", "module", "--strategy", "paper"],
            "--serve vllm with --strategy paper searches block",
        ),
        (["--fixed-bits", "2"], "--fixed-bits 2 with --serve vllm"),
    ],
)
def test_search_refuses_what_vllm_cannot_serve_before_loading(cli, tmp_path, extra, message) -> None:
    code, _, err = cli("search", "--budget", "5bits", "--serve", "vllm", *extra, "-o", tmp_path / "s")
    assert code == 2 and message in err and not (tmp_path / "s").exists(), err


def test_serve_vllm_fits_symmetric_codes_and_refuses_double_quant(tiny_model_dir, tmp_path) -> None:
    # Symmetric codes go into compressed-tensors unchanged; hqq's real zeros are re-quantised.
    from qradaptor.recipes.search import prepare
    from qradaptor.recipes.search_options import SearchOptions

    given = {"model": str(tiny_model_dir), "budget": "6bits", "serve": "vllm", "device": "cpu"}
    request, _, _ = prepare(SearchOptions(**given, output=str(tmp_path / "s")))
    assert (request.config.quant_method, request.config.group_size) == ("symmetric", 64)
    chosen, _, _ = prepare(SearchOptions(**given, output=str(tmp_path / "h"), quant_method="hqq"))
    assert chosen.config.quant_method == "hqq"  # a quantiser given is kept (re-quantised on export)
    with pytest.raises(ValueError, match="--double-quant with --serve vllm: compressed-tensors stores"):
        prepare(SearchOptions(**given, output=str(tmp_path / "d"), double_quant=True))
    assert not (tmp_path / "d").exists()
