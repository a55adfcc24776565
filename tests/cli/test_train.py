"""``qra train`` end to end on the tiny model: run folder, PEFT reload, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from qradaptor.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = ["--max-steps", "3", "--batch-size", "2", "--seq-len", "32", "--eval-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alpaca")
    rows = [
        {"instruction": "a b", "input": "c" * (i % 2), "output": "a b c" if i % 2 else "c b"}
        for i in range(10)
    ]
    path = folder / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def train(model_dir, run, *args: str) -> int:
    return main(["train", str(model_dir), "-o", str(run), "--device", "cpu", *STEPS, *args])


def test_train_writes_a_run_that_peft_reloads(tiny_model_dir, alpaca, tmp_path, capsys) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    assert train(tiny_model_dir, run, "--method", "lora16", "--data", str(alpaca), "--lr", "1e-2") == 0
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "plan.json",
        "train.json",
        "loss.csv",
    ):
        assert (run / name).is_file(), name
    assert not (run / "base.safetensors").exists()  # nothing quantised
    summary = json.loads((run / "train.json").read_text())
    assert summary["method"] == "lora16" and summary["steps"] == 3 and len(summary["losses"]) == 3
    assert summary["memory"]["avg_bits"] == 16 and summary["memory"]["avg_rank"] == 16
    assert summary["memory"]["trainable_params"] > 0 and summary["memory"]["predicted_peak"] > 0
    assert summary["tokens_per_second"] > 0 and summary["final_eval_loss"] > 0
    # 3 blocks x (7 linears + 2 norms) + embedding + final norm; the tied head is not stored
    assert summary["provenance"]["tensor_types"] == {"F32": 29}
    assert summary["provenance"]["text"].startswith("model.safetensors stores 29 tensors (29 F32)")
    assert "tokens/s" in capsys.readouterr().out

    # The saved adapter is a standard PEFT adapter: PeftModel.from_pretrained on the plain base
    # gives the trained model's logits.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    ids = torch.tensor([[2, 3, 4, 2, 3]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(reloaded(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_an_interrupted_run_resumes_to_the_same_result(tiny_model_dir, alpaca, tmp_path, capsys) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ["--plan", "uniform:4:4", "--data", str(alpaca), "--save-every", "2", "--lora-dropout", "0.1"]
    assert train(tiny_model_dir, whole, *args) == 0
    # A first attempt that stops after step 2 (as if killed): same settings, so its checkpoint is valid.
    from qradaptor.train import loop

    original = loop.Trainer._save

    def save_then_die(self, step, result, ema):
        original(self, step, result, ema)
        raise KeyboardInterrupt

    loop.Trainer._save = save_then_die
    try:
        assert train(tiny_model_dir, parts, *args) == 130  # Ctrl-C: a message, not a traceback
    finally:
        loop.Trainer._save = original
    assert "newest checkpoint is step-000002; run the same command with --resume" in capsys.readouterr().err
    assert not (parts / "adapter").exists()
    assert train(tiny_model_dir, parts, *args) == 2  # unfinished run: refused without --resume
    assert train(tiny_model_dir, parts, *args, "--resume") == 0
    a = json.loads((whole / "train.json").read_text())
    b = json.loads((parts / "train.json").read_text())
    assert b["resumed_from"] == 2
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-6)
    assert b["final_eval_loss"] == pytest.approx(a["final_eval_loss"], abs=1e-6)
    assert (parts / "base.safetensors").is_file()


def test_bad_inputs_are_one_clear_error_each(tiny_model_dir, alpaca, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    run = tmp_path / "run"
    cases = [
        (["--method", "lora17"], "unknown method 'lora17'; known methods are lora, lora16"),
        (["--method", "qlora", "--data", str(bad)], "missing column(s) ['instruction', 'output']"),
        ([], "give --plan FILE"),
        (["--method", "qlora-nf4", "--data", str(alpaca)], "qlora-nf4 needs bitsandbytes on a CUDA GPU"),
        (["--method", "qlora-nf4-nodq"], "qlora-nf4-nodq needs bitsandbytes on a CUDA GPU"),
        (["--method", "qlora", "--adalora-init-r", "8"], "--adalora-init-r is an option of --method adalora"),
        (
            ["--method", "adalora", "--adalora-init-r", "8", "--adalora-target-r", "12"],
            "adalora_target_r (12) must be <= adalora_init_r (8)",
        ),
        (["--method", "adalora", "--adalora-init-r", "0"], "adalora_init_r must be an integer >= 1, got 0"),
        (["--method", "amq-lora"], "pass --plan FILE (make one with qra search --fixed-rank 16)"),
        (["--method", "qlora", "--plan", "uniform:4:8"], "method qlora defines its own plan"),
        (
            ["--method", "lora16", "--data", "notes.txt"],
            "'notes.txt' is a .txt file, which holds plain text: add --text",
        ),
        (["--method", "lora16", "--eval-data", "held.TXT"], "--eval-data 'held.TXT' is a .txt file"),
    ]
    for args, message in cases:
        assert train(tiny_model_dir, run, *args) == 2, args
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, (args, err)
    assert not (run / "adapter").exists()


def test_a_plan_for_another_model_is_refused(tiny_model_dir, alpaca, tmp_path, capsys) -> None:
    from qradaptor.plan import Plan

    plan = tmp_path / "plan30.json"
    plan.write_text(Plan.uniform(30, 4, 8).to_json())
    assert train(tiny_model_dir, tmp_path / "run", "--plan", str(plan), "--data", str(alpaca)) == 2
    assert "30" in capsys.readouterr().err


def test_a_finished_run_is_not_overwritten_without_force(tiny_model_dir, alpaca, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train(tiny_model_dir, run, "--method", "qlora-2", "--data", str(alpaca)) == 0
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert train(tiny_model_dir, run, "--method", "qlora-2", "--data", str(alpaca)) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_eval_tasks_after_training_write_eval_json(tiny_model_dir, alpaca, tmp_path) -> None:
    run = tmp_path / "run"
    assert (
        train(
            tiny_model_dir,
            run,
            "--method",
            "qlora-4",
            "--data",
            str(alpaca),
            "--eval-tasks",
            "ppl_wiki",
            "--eval-limit",
            "2",
        )
        == 0
    )
    results = json.loads((run / "eval.json").read_text())
    ppl = [r for r in results["results"] if r["task"] == "ppl_wiki"]
    assert len(ppl) == 1 and ppl[0]["value"] > 1
    assert results["meta"]["provenance"]["text"].startswith("model.safetensors stores 29 tensors (29 F32)")


def test_compile_flag_reaches_the_config_and_graphs_needs_cuda(
    tiny_model_dir, alpaca, tmp_path, capsys, monkeypatch
) -> None:
    from qradaptor.train import run as train_run

    seen = []

    class Stop(Exception):
        pass

    def fake_train_plan(source, method, config, data, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(train_run, "train_plan", fake_train_plan)
    args = ["--method", "lora16", "--data", str(alpaca), "--compile"]
    for mode in ("default", "off"):
        with pytest.raises(Stop):
            train(tiny_model_dir, tmp_path / mode, *args, mode)
    assert [c.compile for c in seen] == ["default", "off"]
    assert train(tiny_model_dir, tmp_path / "g", "--method", "lora16", "--compile", "graphs") == 2
    assert "compile 'graphs' records CUDA graphs and needs a CUDA device, got device 'cpu'" in " ".join(
        capsys.readouterr().err.split()
    )
    assert len(seen) == 2  # refused before anything was loaded or trained


def test_a_run_plots_its_loss_and_logs_tensorboard_events(tiny_model_dir, alpaca, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = ["--method", "lora16", "--data", str(alpaca), "--eval-every", "2", "--tensorboard"]
    assert train(tiny_model_dir, run, *argv) == 0
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    summary = json.loads((run / "train.json").read_text())
    train_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert train_loss == [(s, pytest.approx(v)) for s, v in enumerate(summary["losses"], start=1)]
    assert [[e.step, pytest.approx(e.value)] for e in events.Scalars("eval/loss")] == summary["evals"]


def test_tensorboard_without_its_package_is_refused_before_the_model_loads(
    tiny_model_dir, alpaca, tmp_path, capsys, monkeypatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    missing = lambda name, *a: None if name == "tensorboard" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    assert (
        train(tiny_model_dir, tmp_path / "run", "--method", "lora16", "--data", str(alpaca), "--tensorboard")
        == 2
    )
    assert "pip install 'qradaptor[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _options(verb: str) -> dict[str, object]:
    """dest -> default of every option of ``qra VERB``."""
    from qradaptor.cli import build_parser
    from qradaptor.cli.common import VERB_DEST

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == VERB_DEST).choices[verb]  # argparse's subparsers
    return {a.dest: a.default for a in sub._actions if a.option_strings}


def test_every_train_default_is_the_dataclass_default() -> None:
    import inspect

    from qradaptor.cli.train import field_defaults

    # The verb takes one TrainOptions now; its fields are where an option's default is written.
    from qradaptor.recipes.train_options import TrainOptions as verb

    defaults, parser = field_defaults(), _options("train")
    signature = inspect.signature(verb).parameters
    shared = [name for name in defaults if name in signature]
    assert len(shared) >= 20 and {"epochs", "lr", "seq_len", "eval_size", "split", "data"} <= set(shared)
    for name in shared:
        assert parser[name] == defaults[name], name
        assert signature[name].default == defaults[name], name
