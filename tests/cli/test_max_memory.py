"""``--max-memory`` of qra profile, search, train and eval: checked from the config before any
weight loads, refused with the numbers, gradient checkpointing turned on when only that fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qradaptor.cli.common import load_structure
from qradaptor.recipes.max_memory import PARTIAL_MARGIN
from qradaptor.search.budget import parse_budget
from qradaptor.search.definition import SearchConfig
from qradaptor.search.multifidelity import HalvingConfig
from qradaptor.stage_memory import mib

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"instruction": "a b", "input": "c", "output": "a b c"} for _ in range(10)]
    path = tmp_path_factory.mktemp("alpaca") / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def no_load(monkeypatch):
    """Any weight load fails the test: every refusal must come before one."""
    import qradaptor.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(loading, "load_model", refuse)


def _one_line(err: str) -> str:
    return " ".join(err.split())


@pytest.mark.parametrize("verb", ["profile", "search", "train", "eval"])
@pytest.mark.parametrize("size", ["24", "24 GB", "24G", "lots"])
def test_an_unparsable_limit_is_one_error_before_anything(cli, tmp_path, no_load, verb, size) -> None:
    extra = {
        "profile": ["-o", tmp_path / "p"],
        "search": ["--budget", "4bits", "-o", tmp_path / "s"],
        "train": ["--method", "lora16", "-o", tmp_path / "t"],
        "eval": ["--tasks", "ppl_wiki"],
    }[verb]
    code, _, err = cli(verb, *extra, "--max-memory", size)
    assert code == 2
    assert (
        "--max-memory must be a number and a unit with nothing between, e.g. 24GB, 24GiB, 24000MB"
        in _one_line(err)
    )
    assert f"got {size!r}" in err and len(err.strip().splitlines()) == 1


def test_profile_refused_with_the_numbers_before_loading(
    cli, tiny_model_dir, words, tmp_path, no_load
) -> None:
    args = ["profile", tiny_model_dir, "--data", words, "-o", tmp_path / "p", "--device", "cpu"]
    code, _, err = cli(*args, "--samples", "8", "--seq-len", "64", "--max-memory", "1MB")
    line = _one_line(err)
    assert code == 2 and "--max-memory 1.0 MiB is below what qra profile needs: predicted peak" in line
    # 8 x 64 tokens: 512 x 256 x 4 bytes of log-probs; batch 4 x 64 x 256 x 16 bytes scored
    assert "predicted peak 2.5 MiB (weights 0.5 MiB + full-precision log-probs 0.5 MiB + " in line
    assert "scoring one batch 1.0 MiB)" in line
    assert "lower --samples, --seq-len or --batch-size, or load in bf16 (--dtype bf16)" in line
    code, _, err = cli(*args, "--max-memory", "100KB")
    assert code == 2 and "so no batch or sequence length fits" in _one_line(err)
    assert not (tmp_path / "p").exists()


def test_profile_within_the_limit_runs_and_says_so(cli, tiny_model_dir, words, tmp_path) -> None:
    settings = "--bits 2,4 --samples 2 --seq-len 16 --group-size 32 --quant-method rtn --device cpu"
    code, _, err = cli(
        "profile",
        tiny_model_dir,
        "--data",
        words,
        *settings.split(),
        "-o",
        tmp_path / "p",
        "--max-memory",
        "1GB",
    )
    assert code == 0, err
    assert "qra profile: predicted peak 0.8 MiB within --max-memory 954 MiB" in err
    code, _, err = cli(
        "profile", tiny_model_dir, "--data", words, *settings.split(), "-o", tmp_path / "b", "--dtype", "bf16"
    )
    assert code == 0, err
    record = json.loads((tmp_path / "b" / "sensitivity.json").read_text())
    assert record["settings"]["dtype"] == "bfloat16"


def _train_peaks(model_dir: Path, blocks: int | None = None, **config) -> tuple[int, int]:
    """Predicted train peaks of lora16 on CPU without and with gradient checkpointing (on the
    first ``blocks`` blocks; None: every one)."""
    import torch

    from qradaptor.memory import plan_memory
    from qradaptor.stage_memory import train_peak
    from qradaptor.train.config import TrainConfig
    from qradaptor.train.methods import get_method, method_plan
    from qradaptor.train.run import _memory

    structure = load_structure(str(model_dir))[1]
    method = get_method("lora16")
    plan = method_plan(method, structure, None).for_model(structure)
    report = plan_memory(structure, plan, weight_bytes=4)
    totals = []
    for ckpt in (False, True):
        cfg = TrainConfig(**config, gradient_checkpointing=ckpt, checkpoint_blocks=blocks if ckpt else None)
        step = _memory(structure, plan, method, cfg, cfg.seq_len, torch.float32, None).predicted_peak
        totals.append(train_peak(structure, report, step, 4).total)
    return totals[0], totals[1]


def test_train_turns_gradient_checkpointing_on_when_only_that_fits(
    cli, tiny_model_dir, alpaca, tmp_path, monkeypatch
) -> None:
    import qradaptor.train.run as run_module

    seen = {}

    def fake_train_plan(source, method, config, spec, *args, **kwargs):
        seen["config"], seen["spec"] = config, spec
        raise ValueError("stopped before training")

    monkeypatch.setattr(run_module, "train_plan", fake_train_plan)
    plain, checkpointed = _train_peaks(tiny_model_dir, batch_size=8, seq_len=512)
    assert checkpointed < plain
    base = [
        "train",
        tiny_model_dir,
        "--method",
        "lora16",
        "--data",
        alpaca,
        "--device",
        "cpu",
        "--no-progress",
        "--limit",  # qra train's own --limit (examples), not the memory limit
        "5",
    ]
    between = f"{(plain + checkpointed) // 2000}KB"  # half-way, in whole KB
    code, _, err = cli(*base, "-o", tmp_path / "a", "--max-memory", between)
    assert code == 2 and "stopped before training" in err
    assert seen["config"].gradient_checkpointing is True and seen["spec"].limit == 5
    # The fewest checkpointed blocks whose peak fits: recomputing a block costs time.
    blocks = load_structure(str(tiny_model_dir))[1].num_blocks
    peaks = {k: _train_peaks(tiny_model_dir, k, batch_size=8, seq_len=512)[1] for k in range(1, blocks + 1)}
    assert all(peaks[k + 1] < peaks[k] for k in range(1, blocks)) and peaks[blocks] == checkpointed
    limit = (plain + checkpointed) // 2000 * 1000
    margin = int(limit * PARTIAL_MARGIN)  # kept free by a partial choice (not by all blocks)
    fewest = min(k for k, p in peaks.items() if p + (margin if k < blocks else 0) <= limit)
    assert (seen["config"].checkpoint_blocks or blocks) == fewest
    assert (
        f"qra train: gradient checkpointing on {fewest} of {blocks} blocks: without it the predicted "
        f"peak {mib(plain)}"
    ) in err
    # A limit that two checkpointed blocks meet with the margin: the third keeps its activations.
    assert blocks == 3 and peaks[2] < plain
    limit = (plain + peaks[2]) // 2000 * 1000
    assert peaks[2] + int(limit * PARTIAL_MARGIN) <= limit < plain
    code, _, err = cli(*base, "-o", tmp_path / "a2", "--max-memory", f"{limit // 1000}KB")
    assert code == 2 and seen["config"].checkpoint_blocks == 2 and "on 2 of 3 blocks" in err
    code, _, err = cli(*base, "-o", tmp_path / "b", "--max-memory", "10GB")
    assert seen["config"].gradient_checkpointing is False and "gradient checkpointing on" not in err
    monkeypatch.setattr(run_module, "train_plan", lambda *a, **k: pytest.fail("trained over the limit"))
    code, _, err = cli(*base, "-o", tmp_path / "c", "--max-memory", f"{checkpointed // 1000 - 1}KB")
    line = _one_line(err)
    assert code == 2 and "is below what qra train needs: predicted peak" in line
    assert "lower --batch-size (raise --grad-accum to keep the effective batch) or --seq-len" in line


def test_eval_refused_before_loading(cli, tiny_model_dir, no_load) -> None:
    code, _, err = cli(
        "eval", tiny_model_dir, "--plan", "uniform:4:8", "--device", "cpu", "--max-memory", "1MB"
    )
    line = _one_line(err)
    assert code == 2 and "is below what qra eval needs: predicted peak" in line
    assert "scoring one batch" in line and "lower --batch-size or --seq-len" in line


def test_search_below_the_smallest_plan_is_refused_before_loading(
    cli, tiny_model_dir, words, tmp_path, no_load
) -> None:
    code, _, err = cli(
        "search", tiny_model_dir, "--budget", "3.6bits", "-o", tmp_path / "s", "--data", words,
        "--device", "cpu", "--max-memory", "100KB",
    )  # fmt: skip
    line = _one_line(err)
    assert (
        code == 2 and "is below what even the smallest plan of the search space needs: predicted peak" in line
    )
    assert not (tmp_path / "s" / "study.db").exists()


def test_search_check_turns_checkpointing_on_when_only_that_fits(tiny_model_dir, capsys) -> None:
    from qradaptor.cli.max_memory import SearchFit, check_search
    from qradaptor.memory import plan_memory
    from qradaptor.search.pipeline import search_space
    from qradaptor.search.space import smallest_and_largest
    from qradaptor.stage_memory import search_peak

    structure = load_structure(str(tiny_model_dir))[1]
    config = SearchConfig(budget=parse_budget("3.6bits"), halving=HalvingConfig(rungs=2), group_size=32)
    space, table, _ = search_space(structure, config)
    high = smallest_and_largest(table, space)[1]
    report = plan_memory(
        structure, space.to_plan(high, model_signature=structure.signature, group_size=32), weight_bytes=4
    )
    kwargs = dict(
        bits=space.bit_choices, group_size=32, calibration_samples=1, seq_len=512, batch_size=8, evaluators=3
    )
    plain = search_peak(structure, report, **kwargs, shared_base=True)
    checkpointed = search_peak(structure, report, **kwargs, shared_base=True, gradient_checkpointing=True)
    today = search_peak(structure, report, **kwargs)
    assert checkpointed.total < plain.total < today.total
    common = dict(calibration_samples=1, seq_len=512, batch_size=8, profiles=True, device="cpu")
    assert check_search(plain.total, structure, config, **common) == SearchFit(False, False)
    # On a CPU the host is the device: no QuantCache on the host, checkpointing is next.
    assert check_search(plain.total - 1, structure, config, **common) == SearchFit(True, False)
    assert "qra search: gradient checkpointing in the proxy fine-tunes: otherwise" in capsys.readouterr().err
    # Below that, only leaving out the uniform references fits: the candidate is then the
    # dearest plan within the budget, and below its own peak the search is refused.
    from qradaptor.search.knapsack import dearest_within

    dearest = dearest_within(table, config.budget)
    within = plan_memory(
        structure, space.to_plan(dearest, model_signature=structure.signature, group_size=32), weight_bytes=4
    )
    lean = search_peak(structure, within, **kwargs, shared_base=True, gradient_checkpointing=True)
    assert lean.total < checkpointed.total
    assert check_search(checkpointed.total - 1, structure, config, **common).references is False
    assert "the uniform reference plans left out (as --no-references)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is below what qra search needs"):
        check_search(lean.total - 1, structure, config, **common)


def test_a_search_within_the_limit_chooses_as_the_default_one(cli, tiny_model_dir, words, tmp_path) -> None:
    """The low-memory path (shared base, packed candidates, one alive at a time) scores every
    plan as the default path does: the same trials, losses to 1e-5, the same choice."""
    args = [
        "search", tiny_model_dir, "--budget", "3.6bits", "--data", words, "--eval-data", words,
        "--device", "cpu",
        "--seq-len", 16, "--steps", 2, "--batch-size", 2, "--eval-batches", 1, "--calibration-samples", 2,
        "--group-size", 32, "--ranks", "4,8", "--candidates", 6, "--rungs", 1, "--bayes-iterations", 1,
        "--no-progress",
    ]  # fmt: skip
    code, _, err = cli(*args, "-o", tmp_path / "default")
    assert code == 0, err
    code, _, err = cli(*args, "-o", tmp_path / "lean", "--max-memory", "1GB")
    assert code == 0, err
    assert "qra search: predicted peak" in err and "within --max-memory 954 MiB" in err
    trials = [
        {
            t["plan_hash"]: t["loss"]
            for t in map(json.loads, (tmp_path / name / "trials.jsonl").read_text().splitlines())
        }
        for name in ("default", "lean")
    ]
    assert trials[0].keys() == trials[1].keys()
    assert all(abs(trials[0][k] - trials[1][k]) <= 1e-5 for k in trials[0])
    chosen = [json.loads((tmp_path / n / "summary.json").read_text())["chosen"] for n in ("default", "lean")]
    assert chosen[0]["plan_hash"] == chosen[1]["plan_hash"]


def test_a_bf16_search_scores_as_fp32_within_the_tolerance(cli, tiny_model_dir, words, tmp_path) -> None:
    """``--dtype bf16`` loads, profiles and proxy-tunes in bf16: every trial's loss within 0.03
    nats of the fp32 search's (bf16 keeps 8 bits of mantissa; losses and KL stay fp32)."""
    args = [
        "search", tiny_model_dir, "--budget", "3.6bits", "--data", words, "--eval-data", words,
        "--device", "cpu", "--max-memory", "1GB",
        "--seq-len", 16, "--steps", 2, "--batch-size", 2, "--eval-batches", 1, "--calibration-samples", 2,
        "--group-size", 32, "--ranks", "4,8", "--candidates", 6, "--rungs", 1, "--bayes-iterations", 0,
        "--no-progress",
    ]  # fmt: skip
    for name, dtype in (("fp32", "fp32"), ("bf16", "bf16")):
        code, _, err = cli(*args, "-o", tmp_path / name, "--dtype", dtype)
        assert code == 0, err
    trials = [
        {
            t["plan_hash"]: t["loss"]
            for t in map(json.loads, (tmp_path / name / "trials.jsonl").read_text().splitlines())
        }
        for name in ("fp32", "bf16")
    ]
    shared = trials[0].keys() & trials[1].keys()
    assert len(shared) >= 2
    assert max(abs(trials[0][k] - trials[1][k]) for k in shared) <= 0.03
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bf16"


def test_a_bf16_search_below_its_limit_is_refused_before_loading(
    cli, tiny_model_dir, words, tmp_path, no_load
) -> None:
    code, _, err = cli(
        "search", tiny_model_dir, "--budget", "3.6bits", "-o", tmp_path / "s", "--data", words,
        "--device", "cpu", "--dtype", "bf16", "--max-memory", "100KB",
    )  # fmt: skip
    assert code == 2 and "is below what even the smallest plan of the search space needs" in _one_line(err)
    assert not (tmp_path / "s" / "study.db").exists()
    code, _, err = cli("search", "--budget", "4bits", "-o", tmp_path / "w", "--dtype", "bf16", "--workers", 1)
    assert code == 2 and "--dtype bf16 is for a search in this process" in err


def test_the_8b_search_fits_24gb_in_bf16_with_the_cache_on_the_host(monkeypatch, capsys) -> None:
    """Issue 16's 8B shape at the full preset's settings, priced from the config alone."""
    import torch
    from transformers import LlamaConfig

    from qradaptor.cli.max_memory import SearchFit, check_search
    from qradaptor.models.structure import structure_from_config

    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 2**40})
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: None)
    shape = LlamaConfig(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=49152, tie_word_embeddings=False,
    )  # fmt: skip
    structure = structure_from_config(shape)
    config = SearchConfig(budget=parse_budget("4.0bits"), halving=HalvingConfig(candidates=24, rungs=2))
    common = dict(calibration_samples=8, seq_len=512, batch_size=4, profiles=True, device="cuda")
    assert check_search(25 * 2**30, structure, config, **common, weight_bytes=2) == SearchFit(True, True)
    err = capsys.readouterr().err
    assert "the QuantCache kept on the host and gradient checkpointing in the proxy fine-tunes:" in err
    # 24.0 GiB: the 8-bit plan's peak with one block's weights kept dense for its backward, and
    # 768 MiB for the CUDA process outside the allocator
    assert "predicted peak 25,361 MiB" in err and "CUDA context" not in err
    # 40 GiB: the cache on the host alone fits (39.1 GiB), and costs less time than checkpointing.
    assert check_search(40 * 2**30, structure, config, **common, weight_bytes=2) == SearchFit(False, True)
    # 24GB (22.4 GiB) and 24GiB: only without the uniform references (the 8-bit one is the
    # largest candidate) does it fit: they are left out and said, and the search runs.
    for limit in (24 * 10**9, 24 * 2**30):
        assert check_search(limit, structure, config, **common, weight_bytes=2) == SearchFit(
            True, True, references=False
        )
        assert "the uniform reference plans left out (as --no-references)" in capsys.readouterr().err
    # 21.3GB (20,313 MiB): the smallest plan fits (19,889 MiB), no plan within 4.0 bits does;
    # the CUDA process's own memory is a part of the peak, named.
    with pytest.raises(
        ValueError, match=r"--max-memory 20,313 MiB is below what qra search needs.*CUDA context"
    ):
        check_search(int(21.3e9), structure, config, **common, weight_bytes=2)
    with pytest.raises(ValueError, match=r"even the smallest plan .* load in bf16 \(--dtype bf16\)"):
        check_search(24 * 2**30, structure, config, **common, weight_bytes=4)  # fp32: 27.5 GiB of weights
    # Without the uniform references every plan scored is within 4.0 bits: the candidate is
    # priced at the dearest plan within the budget, not at 8 bits everywhere, and 24GB fits.
    from dataclasses import replace

    lean = replace(config, references=False)
    assert check_search(24 * 10**9, structure, lean, **common, weight_bytes=2) == SearchFit(True, True)
    assert "predicted peak 2" in capsys.readouterr().err


def test_without_references_the_candidate_is_the_dearest_plan_within_the_budget(tiny_model_dir) -> None:
    """dearest_within: most bytes within the budget (brute force over a small space), never
    more than the space's largest; only for avg-bits budgets."""
    import itertools

    import numpy as np

    from qradaptor.search.knapsack import dearest_within
    from qradaptor.search.pipeline import search_space
    from qradaptor.search.space import smallest_and_largest

    structure = load_structure(str(tiny_model_dir))[1]
    config = SearchConfig(budget=parse_budget("3.6bits"), group_size=32, bits=(2, 4, 8), ranks=(4, 8))
    space, table, _ = search_space(structure, config)
    dearest = dearest_within(table, config.budget)
    assert float(table.avg_bits_of(dearest)) <= 3.6
    assert (dearest[:, 1] == len(space.rank_choices) - 1).all()
    best = max(
        int(table.bytes_of(np.array([[b, 1] for b in bits])))
        for bits in itertools.product(range(3), repeat=space.num_units)
        if float(table.avg_bits_of(np.array([[b, 1] for b in bits]))) <= 3.6
    )
    assert int(table.bytes_of(dearest)) == best < int(table.bytes_of(smallest_and_largest(table, space)[1]))
    with pytest.raises(ValueError, match="needs an avg-bits budget"):
        dearest_within(table, parse_budget("100MB"))


def test_a_search_whose_references_alone_do_not_fit_runs_without_them(
    cli, tiny_model_dir, words, tmp_path, monkeypatch
) -> None:
    """When check_search can fit the search only without the uniform references, the search
    runs as with --no-references: none is scored (the full preset scores them otherwise)."""
    import qradaptor.recipes.max_memory as limits

    args = [
        "search", tiny_model_dir, "--budget", "3.6bits", "--data", words, "--eval-data", words,
        "--device", "cpu", "--preset", "full",
        "--seq-len", 16, "--steps", 1, "--batch-size", 2, "--eval-batches", 1, "--calibration-samples", 2,
        "--group-size", 32, "--ranks", "4,8", "--candidates", 4, "--rungs", 1, "--bayes-iterations", 0,
        "--no-progress",
    ]  # fmt: skip
    code, _, err = cli(*args, "-o", tmp_path / "as-is", "--max-memory", "1GB")
    assert code == 0, err
    assert json.loads((tmp_path / "as-is" / "summary.json").read_text())["references"]
    monkeypatch.setattr(
        limits, "check_search", lambda *a, **k: limits.SearchFit(False, False, references=False)
    )
    code, _, err = cli(*args, "-o", tmp_path / "lean", "--max-memory", "1GB")
    assert code == 0, err
    assert not json.loads((tmp_path / "lean" / "summary.json").read_text())["references"]


def test_on_cuda_the_limit_counts_the_process_outside_the_allocator(
    monkeypatch, capsys, tiny_model_dir
) -> None:
    """--max-memory is the whole process, as nvidia-smi counts it: on CUDA the predicted peak
    includes the context and libraries (768 MiB; the fourth 8B run's fine-tune peaked 100 MiB
    over a 24GB limit that capped only the allocator), and the allocator is capped that much lower."""
    import torch

    from qradaptor.recipes.max_memory import CUDA_PROCESS_BYTES, check_profile
    from qradaptor.stage_memory import profile_peak

    total, fractions = 2**40, []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": total}))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: fractions.append(f))
    structure = load_structure(str(tiny_model_dir))[1]
    settings = dict(samples=4, seq_len=64, batch_size=2, weight_bytes=2)
    tensors = profile_peak(structure, **settings).total
    check_profile(tensors + 2**20, structure, **settings, device="cpu")  # on CPU the tensors are all
    with pytest.raises(ValueError, match=r"CUDA context and libraries 768 MiB"):
        check_profile(tensors + 2**20, structure, **settings, device="cuda")
    limit = tensors + CUDA_PROCESS_BYTES + 2**20
    check_profile(limit, structure, **settings, device="cuda")
    assert fractions == [(limit - CUDA_PROCESS_BYTES) / total]
    assert f"predicted peak {mib(limit - 2**20)} within --max-memory {mib(limit)}" in capsys.readouterr().err
