"""The verbs' recipes called in-process with their options dataclasses: the same checks as the
command line, before anything loads, and one way of fitting --max-memory for search and train."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qradaptor.recipes.search_options import PRESETS, SearchOptions
from qradaptor.recipes.train_options import TrainOptions
from qradaptor.stage_memory import StagePeak


def test_a_search_is_sized_by_its_preset_where_not_given() -> None:
    from qradaptor.recipes.search import sized

    quick = sized(SearchOptions(budget="4bits", steps=2, device="cpu"))
    assert quick.preset == "quick" and quick.steps == 2
    assert (quick.seq_len, quick.candidates) == (PRESETS["quick"]["seq_len"], PRESETS["quick"]["candidates"])
    full = sized(SearchOptions(budget="4bits", preset="full"))
    assert full.bayes_iterations == PRESETS["full"]["bayes_iterations"]


def test_the_full_preset_under_a_bits_budget_scores_plans_forward_only(capsys) -> None:
    from qradaptor.recipes.search import sized

    full = PRESETS["full"]
    screen = sized(SearchOptions(budget="4.0bits", preset="full"))
    assert (screen.steps, screen.rungs) == (0, 0)
    assert "forward only (--steps 0)" in capsys.readouterr().err
    kept = [  # ranks cost bytes; per module, --serve, the paper, rank-only and the laptop preset
        SearchOptions(budget="120MB", preset="full"),
        SearchOptions(budget="4.0bits", preset="full", granularity="module"),
        SearchOptions(budget="4.0bits", preset="full", serve="vllm"),
        SearchOptions(budget="4.0bits", preset="full", strategy="paper"),
        SearchOptions(budget="4.0bits", preset="full", fixed_bits=4),
        SearchOptions(budget="4.0bits", preset="full", rungs=1),
    ]
    for options in kept:
        assert (sized(options).steps, sized(options).rungs) == (full["steps"], options.rungs or full["rungs"])
    assert sized(SearchOptions(budget="4.0bits", preset="full", steps=7)).steps == 7
    quick = sized(SearchOptions(budget="4.0bits", preset="quick"))
    assert (quick.steps, quick.rungs) == (PRESETS["quick"]["steps"], PRESETS["quick"]["rungs"])
    assert "forward only" not in capsys.readouterr().err


def test_a_search_in_process_refuses_bad_options_before_anything_loads(tmp_path, monkeypatch) -> None:
    import qradaptor.models.loading as loading
    from qradaptor.recipes import search

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"--steps must be >= 0 \(0: plans scored forward only\), got -1"):
        search.run(SearchOptions(budget="4bits", steps=-1, device="cpu", output=out))
    with pytest.raises(ValueError, match="give at most one of --fixed-bits and --fixed-rank"):
        search.run(SearchOptions(budget="4bits", fixed_bits=4, fixed_rank=8, device="cpu", output=out))
    with pytest.raises(ValueError, match="--dtype must be one of fp32, bf16, got .fp16."):
        search.run(SearchOptions(budget="4bits", dtype="fp16", output=out))  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_a_search_config_is_the_options_sized(tiny_model_dir, tmp_path) -> None:
    from qradaptor.recipes.search import prepare

    options = SearchOptions(
        model=str(tiny_model_dir),
        budget="3.6bits",
        output=str(tmp_path / "run"),
        device="cpu",
        ranks="4,8",
        group_size=32,
        seq_len=16,
    )
    request, structure, _ = prepare(options)
    quick = PRESETS["quick"]
    assert request.config.halving.candidates == quick["candidates"] and request.seq_len == 16
    assert request.config.ranks == (4, 8) and request.config.bits == (2, 3, 4, 8)
    assert request.config.offspring == 1 and request.config.references is False  # quick: none
    assert request.proxy.steps == quick["steps"] and request.preset == "quick"
    assert structure.num_blocks == 3 and not (tmp_path / "run").exists()  # nothing written yet


def test_a_training_in_process_refuses_bad_options_before_anything_loads(tmp_path) -> None:
    from qradaptor.recipes import train

    with pytest.raises(ValueError, match="give --plan FILE"):
        train.run(TrainOptions(output=str(tmp_path / "run")))
    with pytest.raises(ValueError, match="--adalora-init-r is an option of --method adalora"):
        train.run(TrainOptions(output=str(tmp_path / "run"), method="lora16", adalora_init_r=8))
    with pytest.raises(ValueError, match="--eval-size must be >= 0, got -1"):
        train.run(TrainOptions(output=str(tmp_path / "run"), method="lora16", eval_size=-1))
    assert not (tmp_path / "run").exists()


def _peak(mebibytes: int) -> StagePeak:
    """A peak of activations only: nothing fixed, so a batch change could always fit it."""
    return StagePeak("train", (("activations", mebibytes * 2**20),), 0)


def test_first_fit_takes_the_cheapest_that_fits_and_refuses_when_none_does(capsys) -> None:
    from qradaptor.recipes.max_memory import first_fit

    peaks = {"plain": 300, "host": 200, "checkpointed": 100}
    tried: list[str] = []

    def peak(fit: str) -> StagePeak:
        tried.append(fit)
        return _peak(peaks[fit])

    fit, plain = first_fit("train", list(peaks), peak, 250 * 2**20, "cpu", "--batch-size")
    assert (fit, plain.total, tried) == (
        "host",
        300 * 2**20,
        ["plain", "host"],
    )  # the dearer one never priced
    assert "predicted peak" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--batch-size"):
        first_fit("train", list(peaks), peak, 50 * 2**20, "cpu", "--batch-size")


def test_a_module_search_for_vllm_ties_its_fused_groups_and_takes_only_a_module_profile(
    tiny_model_dir, tmp_path
) -> None:
    import json

    from qradaptor.export.vllm_constraints import fused_groups
    from qradaptor.recipes.search import prepare
    from qradaptor.sensitivity_table import SensitivityTable

    options = SearchOptions(
        model=str(tiny_model_dir),
        budget="6bits",
        output=str(tmp_path / "run"),
        device="cpu",
        granularity="module",
        serve="vllm",
        group_size=32,
        seq_len=16,
    )
    request, structure, _ = prepare(options)
    assert request.config.tied == tuple(fused_groups(structure)) and len(request.config.tied) == 2
    assert request.config.bits == (4, 8, 16) and request.config.profile_granularity == "module"
    per_block = SensitivityTable(
        bits=(4, 8), kl=((0.2, 0.01),) * 3, tokens=8, group_size=32, quant_method="hqq"
    )
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps(per_block.to_dict()))
    with pytest.raises(ValueError, match=r"at module granularity takes a per-module .*got a per-block one"):
        prepare(replace(options, sensitivity=str(path)))
    assert not (tmp_path / "run").exists()
