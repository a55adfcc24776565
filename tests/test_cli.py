"""The qra command line, run in-process on a tiny Llama saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qradaptor.cli import main
from qradaptor.cli.common import QUANT_METHODS, format_bytes
from qradaptor.memory import plan_memory, training_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, llama_factory):
    """(model directory with config, weights and tokenizer; the model)."""
    return tiny_model_dir, llama_factory()


def run_json(cli, *argv: object) -> dict:
    code, out, err = cli(*argv, "--json")
    assert code == 0 and "error" not in err, err  # progress bars of transformers may go to stderr
    return json.loads(out)


# ----- global ---------------------------------------------------------------------------
def test_no_verb_prints_help_and_version(cli) -> None:
    code, out, _ = cli()
    assert code == 0 and out.startswith("usage: qra")
    assert all(verb in out for verb in ("info", "plan", "memory"))
    code, out, _ = cli("--version")
    from importlib.metadata import version

    assert (code, out.strip()) == (0, f"qra {version('qradaptor')}")


def test_help_comes_from_the_docstrings(cli) -> None:
    code, out, _ = cli("plan", "--help")
    assert code == 0
    assert "Write a plan (bits and LoRA rank per block)" in out
    assert "input columns per quantisation group" in out  # the Args: entry of group_size


def test_importing_the_cli_does_not_load_torch() -> None:
    code = "import sys, qradaptor.cli as c; c.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_quant_method_choices_match_the_quantizer() -> None:
    from qradaptor.quant.quantizer import QUANT_METHODS as LIBRARY

    assert QUANT_METHODS == LIBRARY


def test_format_bytes() -> None:
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(50 * 2**20) == "50.0 MiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"


# ----- info -----------------------------------------------------------------------------
def test_info_reports_the_models_numbers(cli, tiny) -> None:
    folder, model = tiny
    data = run_json(cli, "info", folder)
    assert (data["model_type"], data["num_blocks"], data["blocks_path"]) == ("llama", 3, "model.layers")
    shapes = {i["name"]: (i["in_features"], i["out_features"], i["bias"]) for i in data["linears"]}
    assert shapes == {
        "self_attn.q_proj": (64, 64, False),
        "self_attn.k_proj": (64, 32, False),  # 2 kv heads of 16
        "self_attn.v_proj": (64, 32, False),
        "self_attn.o_proj": (64, 64, False),
        "mlp.gate_proj": (64, 128, False),
        "mlp.up_proj": (64, 128, False),
        "mlp.down_proj": (128, 64, False),
    }
    assert data["embedding"]["shape"] == [256, 64] and data["head"]["shape"] == [256, 64]
    assert data["tied"] is True
    linears = sum(p.numel() for n, p in model.model.layers.named_parameters() if "proj" in n)
    counts = data["parameters"]
    assert counts["block_linears"] == linears == 3 * (4 * 64 * 64 + 3 * 64 * 128 - 2 * 64 * 32)
    assert counts["embedding"] == 256 * 64 and counts["head"] == 0
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["other"] == counts["total"] - linears - 256 * 64

    code, out, _ = cli("info", folder)
    assert code == 0 and "3 at model.layers" in out and "tied to the embedding" in out
    assert f"{counts['total']:,}" in out


def test_info_counts_an_untied_head(cli, tmp_path: Path, llama_factory) -> None:
    model = llama_factory(tied=False)
    model.save_pretrained(tmp_path)  # config only is read: no tokenizer needed
    data = run_json(cli, "info", tmp_path)
    assert data["tied"] is False and data["parameters"]["head"] == 256 * 64
    assert data["parameters"]["total"] == sum(p.numel() for p in model.parameters())


# ----- plan -----------------------------------------------------------------------------
def test_plan_uniform_writes_a_plan_stamped_for_the_model(cli, tiny) -> None:
    folder, model = tiny
    out_file = folder.parent / "plans" / "p.json"
    out_file.parent.mkdir()
    argv = ["plan", folder, "--uniform", "4:16", "-o", out_file, "--group-size", "32"]
    code, out, err = cli(*argv, "--quant-method", "rtn", "--alpha", "32", "--embed-bits", "8")
    assert (code, err) == (0, "") and str(out_file) in out
    plan = Plan.from_json(out_file.read_text())
    structure = inspect_model(model)
    plan.validate(structure)
    assert plan.model_signature == structure.signature
    assert (plan.block_bits(), plan.block_ranks()) == ([4, 4, 4], [16, 16, 16])
    assert (plan.group_size, plan.quant_method, plan.alpha) == (32, "rtn", 32.0)
    assert plan.name == "uniform-4bit-r16"
    assert (plan.embed_bits, plan.head_bits) == (8, 8)  # tied: the head follows the embedding
    assert [p.name for p in out_file.parent.iterdir()] == ["p.json"]  # no temp file left


def test_plan_from_lists_broadcasts_a_single_value(cli, tiny) -> None:
    folder, model = tiny
    code, out, _ = cli("plan", folder, "--bits", "4,2,16", "--ranks", "8", "--name", "mine")
    assert code == 0
    plan = Plan.from_json(out)
    assert (plan.block_bits(), plan.block_ranks(), plan.name) == ([4, 2, 16], [8, 8, 8], "mine")
    plan.validate(inspect_model(model))


def test_plan_refuses_to_overwrite_without_force(cli, tiny, tmp_path: Path) -> None:
    folder, _ = tiny
    target = tmp_path / "plan.json"
    target.write_text("keep me")
    code, out, err = cli("plan", folder, "--uniform", "4:16", "-o", target)
    assert (code, out) == (2, "")
    expected = f"qra plan: error: output {str(target)!r} already exists; pass --force to overwrite it"
    assert err.strip() == expected
    assert target.read_text() == "keep me"
    assert cli("plan", folder, "--uniform", "2:4", "-o", target, "--force")[0] == 0
    assert Plan.from_json(target.read_text()).block_bits() == [2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


# ----- memory ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, weight_bytes", [("bf16", 2), ("fp32", 4)])
def test_memory_totals_equal_plan_memory(cli, tiny, tmp_path: Path, dtype: str, weight_bytes: int) -> None:
    folder, model = tiny
    structure = inspect_model(model)
    plan = Plan.from_lists([4, 2, 16], [16, 0, 8], embed_bits=8, head_bits=8, name="mixed")
    plan_file = tmp_path / "mixed.json"
    plan_file.write_text(plan.to_json())
    data = run_json(cli, "memory", folder, "--plan", plan_file, "--dtype", dtype)
    report = plan_memory(structure, plan, weight_bytes=weight_bytes)
    assert data["totals"] == {
        "block_linears": report.linear_bytes,
        "embedding": report.embed_bytes,
        "head": report.head_bytes,
        "other": report.other_bytes,
        "adapters": report.adapter_bytes,
        "total": report.total_bytes,
    }
    assert sum(data["totals"][k] for k in data["totals"] if k != "total") == report.total_bytes
    assert [(b["bits"], b["rank"]) for b in data["blocks"]] == [(4, 16), (2, 0), (16, 8)]
    assert sum(b["weight_bytes"] for b in data["blocks"]) == report.linear_bytes
    assert data["blocks"][1]["adapter_bytes"] == 0
    assert data["avg_bits"] == pytest.approx(report.avg_bits)
    assert (data["avg_rank"], data["trainable_params"]) == (8, report.adapter_params)

    code, out, _ = cli("memory", folder, "--plan", plan_file, "--dtype", dtype)
    assert code == 0
    assert ["total", *format_bytes(report.total_bytes).split()] in [line.split() for line in out.splitlines()]


def test_memory_shorthand_and_training_estimate(cli, tiny) -> None:
    folder, model = tiny
    structure = inspect_model(model)
    argv = ["memory", folder, "--plan", "uniform:3:4", "--train", "--batch-size", "2", "--seq-len", "16"]
    data = run_json(cli, *argv, "--gradient-checkpointing")
    report = plan_memory(structure, Plan.uniform(3, 3, 4))
    assert data["totals"]["total"] == report.total_bytes and data["avg_bits"] == pytest.approx(3.5)
    step = training_memory(structure, report, batch_size=2, seq_len=16, gradient_checkpointing=True)
    parts = ("weights", "gradients", "optimizer", "activations", "total")
    assert {k: data["training"][k] for k in parts} == {
        "weights": step.weights,
        "gradients": step.gradients,
        "optimizer": step.optimizer,
        "activations": step.activations,
        "total": step.total,
    }
    code, out, _ = cli(*argv, "--dtype", "fp32")
    assert code == 0 and "assumes one GPU: fp32 activations and unquantised weights, fp32 adapters" in out


def test_memory_training_estimate_with_dropout_and_dora(cli, tiny) -> None:
    folder, model = tiny
    structure = inspect_model(model)
    argv = ["memory", folder, "--plan", "uniform:4:8", "--train", "--batch-size", "2", "--seq-len", "16"]
    data = run_json(cli, *argv, "--lora-dropout", "--adapter", "dora")
    report = plan_memory(structure, Plan.uniform(3, 4, 8))
    step = training_memory(structure, report, batch_size=2, seq_len=16, lora_dropout=True, adapter="dora")
    assert data["training"]["total"] == step.total
    assert data["training"]["adapter"] == "dora" and data["training"]["lora_dropout"] is True
    plain = training_memory(structure, report, batch_size=2, seq_len=16)
    assert step.total > plain.total
    code, out, _ = cli(*argv, "--adapter", "adalora")
    assert code == 0 and "adalora adapters" in out


def test_memory_verify_says_equal(cli, tiny, tmp_path: Path) -> None:
    folder, _ = tiny
    code, out, _ = cli("memory", folder, "--plan", "uniform:4:8", "--verify")
    assert code == 0 and "result: equal" in out
    plan_file = tmp_path / "p.json"
    assert cli("plan", folder, "--bits", "2,8,16", "--ranks", "4,0,16", "-o", plan_file)[0] == 0
    verify = run_json(cli, "memory", folder, "--plan", plan_file, "--verify")["verify"]
    assert verify["equal"] is True
    assert verify["measured_bytes"] == verify["predicted_bytes"] > 0
    in_plus_out = (64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64)  # q o, k v, gate up, down
    assert verify["measured_trainable_params"] == (4 + 0 + 16) * in_plus_out == 20480


def test_memory_verify_mismatch_exits_1(cli, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import qradaptor.memory

    monkeypatch.setattr(qradaptor.memory, "model_tensor_bytes", lambda model: 0)
    code, out, _ = cli("memory", tiny[0], "--plan", "uniform:4:8", "--verify")
    assert code == 1 and "result: NOT equal" in out


# ----- errors ---------------------------------------------------------------------------
def _plan_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return str(path)


BAD = {
    "missing plan file": (
        lambda d, t: ["memory", d, "--plan", str(t / "nope.json")],
        "does not exist",
    ),
    "bad shorthand": (lambda d, t: ["memory", d, "--plan", "uniform:5x"], "uniform:BITS:RANK"),
    "plan for a 30-block model": (
        lambda d, t: ["memory", d, "--plan", _plan_file(t, Plan.uniform(30, 4, 16).to_json())],
        "made for another model: it has 30 blocks",
    ),
    "invalid JSON": (lambda d, t: ["memory", d, "--plan", _plan_file(t, "{oops")], "not valid JSON"),
    "bits 9": (lambda d, t: ["plan", d, "--bits", "4,9,4", "--ranks", "8"], "in 1..8 or 16"),
    "uniform bits 9": (lambda d, t: ["plan", d, "--uniform", "9:8"], "got 9"),
    "negative rank": (lambda d, t: ["plan", d, "--bits", "4", "--ranks", "8,-1,8"], ">= 0"),
    "wrong list length": (
        lambda d, t: ["plan", d, "--bits", "4,4", "--ranks", "8"],
        "one value per block (3)",
    ),
    "output folder missing": (
        lambda d, t: ["plan", d, "--uniform", "4:8", "-o", str(t / "none" / "p.json")],
        "folder",
    ),
    "unknown model": (lambda d, t: ["info", str(t / "no-model")], "does not exist"),
    "train without sizes": (lambda d, t: ["memory", d, "--plan", "uniform:4:8", "--train"], "--batch-size"),
    "adapter without train": (
        lambda d, t: ["memory", d, "--plan", "uniform:4:8", "--adapter", "dora"],
        "--train",
    ),
    "non-integer option": (lambda d, t: ["plan", d, "--uniform", "4:8", "--group-size", "x"], "invalid int"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(cli, tiny, tmp_path: Path, case: str) -> None:
    folder, _ = tiny
    make_argv, phrase = BAD[case]
    argv = make_argv(str(folder), tmp_path)
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"qra {argv[0]}: error: ") and err.endswith("\n") and err.count("\n") == 1
    assert phrase in err
    if case == "missing plan file":
        assert str(tmp_path / "nope.json") in err


def test_debug_reraises(cli, tiny, tmp_path: Path) -> None:
    folder, _ = tiny
    with pytest.raises(ValueError, match="does not exist"):
        main(["memory", str(folder), "--plan", str(tmp_path / "nope.json"), "--debug"])
    with pytest.raises(ValueError, match="does not exist"):
        main(["--debug", "memory", str(folder), "--plan", str(tmp_path / "nope.json")])


# ----- the embedded model ---------------------------------------------------------------
@pytest.mark.slow
def test_embedded_model_info_and_memory(cli) -> None:
    data = run_json(cli, "info")
    assert (data["origin"], data["num_blocks"], len(data["linears"])) == ("embedded", 30, 7)
    assert data["parameters"]["total"] == 134_515_008
    memory = run_json(cli, "memory", "--plan", "uniform:4:16")
    assert len(memory["blocks"]) == 30 and memory["avg_bits"] == pytest.approx(4.5)
    in_plus_out = (576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 2 + (1536 + 576)
    assert memory["totals"]["adapters"] == 30 * 16 * in_plus_out * 4  # fp32 adapters of rank 16
    code, out, _ = cli("memory", "--plan", "uniform:4:16")
    assert code == 0 and "llama with 30 blocks of 7 linears" in out


def test_every_verbs_help_shows_every_options_default() -> None:
    import argparse

    from qradaptor.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in verbs.choices.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        for action in sub._actions:
            default = action.default
            unset = any(default is nothing for nothing in (None, False, argparse.SUPPRESS))
            if not action.option_strings or unset:
                continue
            assert f"default: {default}" in text or f"(default: {default})" in text, (name, action.dest)
            checked += 1
    assert checked > 60  # every verb's defaults, not a handful
