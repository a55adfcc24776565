"""``qra plan --baseline``, run in-process on the tiny Llama saved to disk, checked against the library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from qradaptor.baselines import BASELINE_PLANS, baseline_plan
from qradaptor.data import load_texts, pack_texts
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.train.probe import gradient_norms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def structure(tiny_model_dir, llama_factory):
    return inspect_model(llama_factory())


def test_help_lists_the_options(cli) -> None:
    code, out, _ = cli("plan", "--help")
    assert code == 0 and "--baseline NAME" in out and "--rank R" in out
    assert "rank-gradient (proportional to per-block gradient norms, measured by a probe" in out
    assert "base LoRA rank of --baseline (default 16; the knapsack" in out


def test_decay_with_rank_and_bits(cli, tiny_model_dir, structure) -> None:
    code, out, _ = cli(
        "plan", tiny_model_dir, "--baseline", "rank-linear-decay", "--rank", "8", "--bits", "3"
    )
    assert code == 0
    plan = Plan.from_json(out)
    assert (plan.block_bits(), plan.block_ranks()) == ([3] * 3, [4, 8, 12])  # r/2 up to 3r/2 at the top
    assert plan == baseline_plan("rank-linear-decay", structure, rank=8, bits=3)


def test_embed8_body4_written_to_a_file(cli, tiny_model_dir, structure, tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    code, out, _ = cli("plan", tiny_model_dir, "--baseline", "embed8-body4", "-o", target)
    assert code == 0 and "wrote plan embed8-body4" in out and "(bits 4; avg rank 16)" in out
    plan = Plan.from_json(target.read_text())
    assert (plan.embed_bits, plan.head_bits, plan.block_bits()) == (8, 8, [4, 4, 4])
    assert plan.model_signature == structure.signature


def test_options_pass_through_and_module_plans_summarise(cli, tiny_model_dir, structure, tmp_path) -> None:
    target = tmp_path / "focus.json"
    argv = ["--baseline", "rank-attn-focus", "-o", target, "--group-size", "32", "--quant-method", "rtn"]
    code, out, _ = cli("plan", tiny_model_dir, *argv, "--alpha", "8", "--embed-bits", "8", "--name", "mine")
    plan = Plan.from_json(target.read_text())
    assert code == 0 and plan.granularity == "module"
    # 4 attention linears at 16 and 3 FFN linears at 8, in each block
    assert (
        f"wrote plan mine for {structure.describe()}" in out and f"avg rank {(4 * 16 + 3 * 8) / 7:g})" in out
    )
    assert (plan.group_size, plan.quant_method, plan.alpha, plan.embed_bits, plan.head_bits) == (
        32,
        "rtn",
        8.0,
        8,
        8,
    )
    assert plan.layers == baseline_plan("rank-attn-focus", structure).layers


def test_gradient_runs_the_probe_as_the_library_does(cli, tiny_model_dir, structure) -> None:
    code, out, err = cli("plan", tiny_model_dir, "--baseline", "rank-gradient", "--rank", "4")
    assert code == 0 and "gradient probe (4 steps of 2 x 128 tokens)" in err
    loaded = load_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    ids = pack_texts(
        load_texts(None), loaded.tokenizer, 128, num_sequences=8, seed=0
    )  # 128: the tiny model's positions
    norms = gradient_norms(loaded.model, structure, list(ids.split(2)), rank=4, steps=4, seed=0)
    assert Plan.from_json(out) == baseline_plan("rank-gradient", structure, rank=4, gradient_norms=norms)
    assert sum(Plan.from_json(out).block_ranks()) == 12


@pytest.mark.parametrize("name", [n for n in BASELINE_PLANS if n != "rank-gradient"])
def test_every_structural_baseline_equals_the_library(cli, tiny_model_dir, structure, name: str) -> None:
    code, out, _ = cli("plan", tiny_model_dir, "--baseline", name)
    assert code == 0 and Plan.from_json(out) == baseline_plan(name, structure)


BAD = {
    "unknown name": (["--baseline", "qlora5"], "--baseline must be one of lora16, qlora, qlora-4"),
    "training method": (["--baseline", "loftq"], "`qra train --method loftq`"),
    "with uniform": (["--baseline", "qlora", "--uniform", "4:16"], "without --uniform and --ranks"),
    "with ranks": (["--baseline", "qlora", "--ranks", "8"], "without --uniform and --ranks"),
    "bits list": (["--baseline", "qlora", "--bits", "4,4,4"], "--bits with --baseline must be one value"),
    "bad bits": (["--baseline", "qlora", "--bits", "9"], "--bits must be an integer in 1..8 or 16"),
    "fixed bits": (["--baseline", "qlora-2", "--bits", "3"], "fixes the block bits at 2; drop --bits 3"),
    "rank 0": (["--baseline", "qlora", "--rank", "0"], "--rank must be an integer >= 1, got 0"),
    "rank alone": (["--uniform", "4:16", "--rank", "8"], "--rank goes with --baseline"),
    "embed8 embed bits": (
        ["--baseline", "embed8-body4", "--embed-bits", "4"],
        "drop --embed-bits/--head-bits",
    ),
    "too coarse groups": (["--baseline", "qlora", "--group-size", "48"], "group"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(cli, tiny_model_dir, case: str) -> None:
    args, phrase = BAD[case]
    code, out, err = cli("plan", tiny_model_dir, *args)
    assert (code, out) == (2, "")
    assert err.startswith("qra plan: error: ") and err.count("\n") == 1
    assert phrase in err


def test_bad_names_fail_before_the_model_loads(cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    code, _, err = cli("plan", missing, "--baseline", "adalora")
    assert code == 2 and "is a training method" in err


# --- --baseline knapsack ------------------------------------------------------------------------

KNAPSACK_QUANT = ["--group-size", "32", "--quant-method", "rtn"]


@pytest.fixture(scope="module")
def tiny_profile(tiny_model_dir, tmp_path_factory) -> Path:
    """A qra profile sensitivity.json of the tiny Llama at bits 2,4 (group 32, rtn)."""
    from qradaptor.cli import main

    folder = tmp_path_factory.mktemp("profile")
    argv = [str(tiny_model_dir), "--bits", "2,4", "--samples", "3", "--seq-len", "8", "--device", "cpu"]
    assert main(["profile", *argv, "--group-size", "32", "--quant-method", "rtn", "-o", str(folder)]) == 0
    return folder / "sensitivity.json"


def test_knapsack_from_a_profile_equals_the_library(cli, tiny_model_dir, tiny_profile, structure, tmp_path):
    import json

    from qradaptor.search.budget import parse_budget
    from qradaptor.search.knapsack import knapsack_plan
    from qradaptor.sensitivity_table import SensitivityTable

    target = tmp_path / "k.json"
    argv = ["--baseline", "knapsack", "--budget", "3.7bits", "--sensitivity", tiny_profile, "--rank", "8"]
    code, out, err = cli("plan", tiny_model_dir, *argv, *KNAPSACK_QUANT, "-o", target)
    assert code == 0, err
    plan = Plan.from_json(target.read_text())
    table = SensitivityTable.from_dict(json.loads(tiny_profile.read_text()))
    expected = knapsack_plan(
        structure, table, parse_budget("3.7bits"), rank=8, group_size=32, quant_method="rtn", alpha=16.0
    )
    assert plan == expected.for_model(structure)
    assert plan.name == "knapsack-3.7bits-r8" and sorted(set(plan.block_bits())) == [2, 4]
    # Group 32: 2 bits store 3 a weight, 4 store 5; 3.7 buys one 4-bit block, on the most sensitive.
    assert plan.block_bits()[max(range(3), key=lambda b: table.column(2)[b])] == 4
    assert "wrote plan knapsack-3.7bits-r8" in out


def test_knapsack_profiles_first_without_a_file(cli, tiny_model_dir, tmp_path) -> None:
    argv = ["--baseline", "knapsack", "--budget", "16bits", "--bits", "2,16", "--device", "cpu"]
    code, out, err = cli("plan", tiny_model_dir, *argv, *KNAPSACK_QUANT)
    assert code == 0, err
    assert "profiled 1 bit-widths" in err and Plan.from_json(out).block_bits() == [16, 16, 16]


def test_knapsack_rank_benefit_chooses_ranks(cli, tiny_model_dir, tiny_profile, structure) -> None:
    import json

    from qradaptor.search.budget import parse_budget
    from qradaptor.search.knapsack import knapsack_plan
    from qradaptor.sensitivity_table import SensitivityTable

    argv = ["--baseline", "knapsack", "--budget", "300KB", "--sensitivity", tiny_profile, "--rank-benefit"]
    table = SensitivityTable.from_dict(json.loads(tiny_profile.read_text()))
    for benefit in ("4:0,16:0", "4:0,16:5"):
        code, out, err = cli("plan", tiny_model_dir, *argv, benefit, *KNAPSACK_QUANT)
        assert code == 0, err
        plan = Plan.from_json(out)
        expected = knapsack_plan(
            structure,
            table,
            parse_budget("300KB"),
            rank_benefit={4: 0.0, 16: float(benefit[-1])},
            group_size=32,
            quant_method="rtn",
            alpha=16.0,
        )
        assert plan == expected.for_model(structure) and plan.name == "knapsack-0.3MB-ranks"
    # Rank worth nothing: the smallest rank and more bits; worth 5 nats: the largest.
    assert set(
        Plan.from_json(cli("plan", tiny_model_dir, *argv, "4:0,16:0", *KNAPSACK_QUANT)[1]).block_ranks()
    ) == {4}
    assert set(plan.block_ranks()) == {16}


def test_knapsack_under_a_byte_budget_chooses_ranks_bits_first(cli, tiny_model_dir, tiny_profile, structure):
    import json

    from qradaptor.search.budget import parse_budget
    from qradaptor.search.knapsack import knapsack_plan
    from qradaptor.search.knapsack_ranks import bytes_left_to_ranks
    from qradaptor.sensitivity_table import SensitivityTable

    table = SensitivityTable.from_dict(json.loads(tiny_profile.read_text()))

    def made(budget: str, *more: str) -> tuple[Plan, str]:
        code, out, err = cli(
            "plan", tiny_model_dir, "--baseline", "knapsack", "--budget", budget, "--sensitivity",
            tiny_profile, *KNAPSACK_QUANT, *more,
        )  # fmt: skip
        assert code == 0, err
        return Plan.from_json(out), err

    def summed_kl(plan: Plan) -> float:
        return sum(table.column(b)[i] for i, b in enumerate(plan.block_bits()))

    plan, err = made("290KB")
    expected = knapsack_plan(
        structure, table, parse_budget("290KB"), rank_benefit=bytes_left_to_ranks(), group_size=32,
        quant_method="rtn", alpha=16.0,
    )  # fmt: skip
    assert plan == expected.for_model(structure) and plan.name == "knapsack-0.29MB-ranks"
    # The library's default is the command's: no rank under a byte budget chooses them.
    kwargs = {"group_size": 32, "quant_method": "rtn", "alpha": 16.0}
    assert knapsack_plan(structure, table, parse_budget("290KB"), **kwargs) == expected
    assert "290KB is a byte budget: the knapsack chooses each unit's rank among 4, 8, 16" in err
    # Bits first: the smallest rank's summed KL (every block at 4 bits), below what one fixed
    # rank 16 leaves (2 bits on two blocks); the bytes left over go to the adapters.
    smallest, largest = made("290KB", "--rank", "4")[0], made("290KB", "--rank", "16")[0]
    assert summed_kl(plan) == pytest.approx(summed_kl(smallest)) and summed_kl(plan) < summed_kl(largest)
    assert plan.block_bits() == [4, 4, 4] and sorted(plan.block_ranks()) == [8, 16, 16]
    # Where rank 16 everywhere does not fit at all, the knapsack still makes a plan.
    assert made("200KB")[0].block_bits() == [4, 4, 4]
    # Bytes to spare once every block has the top bits: all of it to the adapters.
    spare = made("400KB")[0]
    assert set(spare.block_bits()) == {4} and set(spare.block_ranks()) == {16}
    # A bits budget prices no adapter: rank 16, as before.
    assert made("3.7bits")[0].name == "knapsack-3.7bits-r16"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "4bits"], r"--budget and --sensitivity go with --baseline knapsack"),
        (["--baseline", "knapsack"], r"--baseline knapsack needs --budget, e.g. 4.0bits or 120MB"),
        (["--baseline", "knapsack", "--budget", "4GBs"], r"budget unit .gbs. is unknown"),
        (["--baseline", "knapsack", "--budget", "4bits", "--uniform", "4:8"], r"without --uniform"),
        (["--baseline", "knapsack", "--budget", "4bits", "--bits", "4,2"], r"ascending without repeats"),
        (["--baseline", "knapsack", "--budget", "4bits", "--rank-benefit", "4:0,16:x"], r"RANK:NATS pairs"),
        (
            ["--baseline", "knapsack", "--budget", "4bits", "--rank-benefit", "4:0", "--rank", "8"],
            r"without --rank",
        ),
        (["--uniform", "4:8", "--rank-benefit", "4:0"], r"--rank-benefit goes with --baseline knapsack"),
        (["--baseline", "knapsack", "--budget", "4bits", "--sensitivity", "nope.json"], r"does not exist"),
        (
            ["--baseline", "knapsack", "--budget", "2.5bits", "--sensitivity", "PROFILE"],
            r"smallest plan .*: 3 avg",
        ),
        (
            ["--baseline", "knapsack", "--budget", "4bits", "--sensitivity", "PROFILE", "--bits", "2,3"],
            r"lacks bits \[3\]",
        ),
        (
            ["--baseline", "knapsack", "--budget", "4bits", "--sensitivity", "OTHER"],
            r"profiled on another model",
        ),
    ],
)
def test_knapsack_bad_input_is_one_error_and_writes_nothing(
    cli, tiny_model_dir, tiny_profile, tmp_path, argv, message
) -> None:
    import json

    other = tmp_path / "other.json"
    record = json.loads(tiny_profile.read_text())
    other.write_text(json.dumps({**record, "model_signature": "llama:99x7:deadbeef"}))
    argv = [{"PROFILE": str(tiny_profile), "OTHER": str(other)}.get(a, a) for a in argv]
    target = tmp_path / "plan.json"
    code, out, err = cli("plan", tiny_model_dir, *argv, *KNAPSACK_QUANT, "-o", target)
    assert code == 2 and re.search(message, err), err
    assert not target.exists()


def test_knapsack_over_two_group_sizes_with_double_quant(
    cli, tiny_model_dir, tiny_profile, structure, tmp_path
) -> None:
    """qra profile --double-quant at groups 32 and 64, then one knapsack choosing bits and group per block."""
    from qradaptor.memory import plan_memory

    files = []
    for group in (32, 64):
        folder = tmp_path / f"g{group}"
        argv = [
            "--bits",
            "2,5,6",
            "--samples",
            "1",
            "--seq-len",
            "8",
            "--device",
            "cpu",
            "--quant-method",
            "rtn",
        ]
        code, _, err = cli(
            "profile", tiny_model_dir, *argv, "--group-size", group, "--double-quant", "-o", folder
        )
        assert code == 0, err
        files.append(str(folder / "sensitivity.json"))
    argv = ["--baseline", "knapsack", "--budget", "5.1bits", "--sensitivity", ",".join(files)]
    code, out, err = cli(
        "plan", tiny_model_dir, *argv, "--group-size", "32", "--quant-method", "rtn", "--double-quant"
    )
    assert code == 0, err
    plan = Plan.from_json(out)
    assert plan.double_quant and {plan.group_size_of(s) for s in plan.layers.values()} <= {32, 64}
    assert plan_memory(structure, plan).avg_bits <= 5.1
    # A profile without double quantisation is refused for a double-quantised plan.
    code, _, err = cli("plan", tiny_model_dir, *argv[:-1], tiny_profile, *KNAPSACK_QUANT, "--double-quant")
    assert code == 2 and "with rtn, the plan quantises at group size 32 with rtn, double-quantised" in err


def test_symmetric_quantiser(cli, tiny_model_dir) -> None:
    code, out, _ = cli(
        "plan", tiny_model_dir, "--uniform", "4:16", "--group-size", "32", "--quant-method", "symmetric"
    )
    assert code == 0 and Plan.from_json(out).quant_method == "symmetric"
    # Refused before anything is profiled: a symmetric fit has no zeros to double-quantise.
    code, _, err = cli(
        "plan",
        tiny_model_dir,
        "--baseline",
        "knapsack",
        "--budget",
        "4bits",
        "--quant-method",
        "symmetric",
        "--double-quant",
    )
    assert code == 2 and "--quant-method symmetric stores one float16 scale per group and no zero" in err


def test_a_one_bit_symmetric_knapsack_is_refused_before_the_profile(cli, tiny_model_dir, monkeypatch) -> None:
    # It used to load the model and start fitting before the quantiser refused one bit.
    import qradaptor.cli.profile

    def no_profile(*args, **kwargs):
        raise AssertionError("profiled before the bits were checked")

    monkeypatch.setattr(qradaptor.cli.profile, "measure_profile", no_profile)
    code, _, err = cli(
        "plan", tiny_model_dir, "--baseline", "knapsack", "--budget", "4bits",
        "--quant-method", "symmetric", "--bits", "1,4",
    )  # fmt: skip
    assert code == 2 and "--quant-method symmetric needs bits >= 2 (one bit holds only" in err
