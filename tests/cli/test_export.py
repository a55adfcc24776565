"""``qra export`` and ``qra eval --run`` on a run folder built here as ``qra train`` writes one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qradaptor import lora
from qradaptor.assemble import read_adapter
from qradaptor.build import apply_plan, quantize_model_
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.packed import save_packed_base
from qradaptor.plan import Plan
from qradaptor.runs import assemble_run, merged_run

IDS = torch.tensor([[1, 2, 3, 4, 2, 3, 0, 1]])
PLAN = Plan.from_lists([4, 16, 2], [8, 0, 4], embed_bits=8, head_bits=8, group_size=32, name="mixed")


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    pass


def _finish_run(
    model, structure, run: Path, plan: Plan, q_proj: str | None = "model.layers.0.self_attn.q_proj"
) -> torch.Tensor:
    """Saves adapter, packed base and plan into ``run``; returns the trained model's logits.

    One scale of the packed base is changed first, as LoftQ changes codes: a reload that
    re-fitted the base instead of reading the file would not give these logits.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_E" in name:
                p.normal_(0, 0.2)
            elif "lora_magnitude" in name:
                p.mul_(1.5)
        if q_proj is not None:
            model.get_submodule(f"base_model.model.{q_proj}.base_layer").scale.mul_(1.25)
        expected = model(IDS).logits
    run.mkdir()
    model.save_pretrained(run / "adapter")
    save_packed_base(model, structure, plan, run / "base.safetensors", model_fingerprint="w")
    (run / "plan.json").write_text(plan.to_json())
    return expected


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """(run folder of a LoRA run on PLAN, the trained model's logits on IDS)."""
    model = load_model(str(tiny_model_dir)).model
    structure = inspect_model(model)
    peft = apply_plan(model, PLAN)
    run = tmp_path_factory.mktemp("runs") / "run"
    return run, _finish_run(peft, structure, run, PLAN)


def _reference_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("b") == 3
    with torch.no_grad():
        return model(IDS).logits


def test_assemble_run_gives_the_model_as_trained(trained) -> None:
    run, expected = trained
    built = assemble_run(run)
    assert built.base == str(run / "base.safetensors") and built.plan == PLAN
    with torch.no_grad():
        torch.testing.assert_close(built.model(IDS).logits, expected, atol=1e-6, rtol=1e-6)


def test_export_merged_matches_the_trained_model(trained, tmp_path, cli) -> None:
    run, expected = trained
    out = tmp_path / "merged"
    code, stdout, err = cli("export", run, "-o", out, "--dtype", "float32", "--device", "cpu")
    assert code == 0, err
    assert "merged float32 model" in stdout
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "qradaptor_export.json").read_text())
    assert record["plan_hash"] == PLAN.plan_hash and record["base"].endswith("base.safetensors")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    torch.testing.assert_close(_reference_logits(out), expected, atol=1e-4, rtol=1e-4)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_every_file_of_an_export_has_one_mode(trained, tmp_path, cli) -> None:
    import os

    run, _ = trained
    out = tmp_path / "merged"
    assert cli("export", run, "-o", out, "--device", "cpu")[0] == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    mask = os.umask(0o022)
    os.umask(mask)
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~mask}, modes


def test_export_merged_bf16_by_default(trained, tmp_path, cli) -> None:
    run, expected = trained
    code, _, err = cli("export", run, "-o", tmp_path / "m", "--merged", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    torch.testing.assert_close(_reference_logits(tmp_path / "m"), expected, atol=0.1, rtol=0.05)


def test_export_packed_is_a_run_that_assembles_the_same(trained, tmp_path, cli) -> None:
    run, expected = trained
    out = tmp_path / "package"
    code, _, err = cli("export", run, "-o", out, "--packed")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "base.safetensors", "plan.json"]
    assert (out / "base.safetensors").read_bytes() == (run / "base.safetensors").read_bytes()
    with torch.no_grad():
        torch.testing.assert_close(assemble_run(out).model(IDS).logits, expected, atol=1e-6, rtol=1e-6)


def test_export_refuses_to_overwrite_then_replaces_with_force(trained, tmp_path, cli) -> None:
    run, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    code, _, err = cli("export", run, "-o", out, "--packed")
    assert code == 2 and "already exists; pass --force" in err and (out / "old.txt").is_file()
    code, _, err = cli("export", run, "-o", out, "--packed", "--force")
    assert code == 0, err
    assert not (out / "old.txt").exists() and (out / "plan.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nope", "-o", "{tmp}/o"], "does not exist or is not a folder"),
        (["{tmp}", "-o", "{tmp}/o"], "is not a training run: it has no plan.json"),
        (["{run}", "-o", "{run}/inside"], "must lie outside the run folder"),
        (["{run}", "-o", "{tmp}/no/such/o"], "folder '{tmp}/no/such' does not exist"),
        (["{run}", "-o", "{tmp}/o", "--merged", "--packed"], "not allowed with argument"),
    ],
)
def test_export_bad_input(trained, tmp_path, cli, argv, message) -> None:
    run, _ = trained
    fill = lambda s: s.format(tmp=tmp_path, run=run)  # noqa: E731
    code, _, err = cli("export", *map(fill, argv))
    assert code == 2 and fill(message) in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_run_without_adapter_or_for_another_plan(trained, tmp_path) -> None:
    run, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plan.json").write_text(PLAN.to_json())
    with pytest.raises(ValueError, match="has no adapter/ folder although its plan has adapters"):
        assemble_run(bad)
    (bad / "adapter").symlink_to(run / "adapter")
    (bad / "base.safetensors").symlink_to(run / "base.safetensors")
    other = Plan.from_lists([4, 16, 3], [8, 0, 4], embed_bits=8, head_bits=8, group_size=32)
    (bad / "plan.json").write_text(other.to_json())
    with pytest.raises(ValueError, match=r"base.safetensors' was quantised with plan mixed\("):
        assemble_run(bad)


def test_run_without_packed_base_quantises_from_the_plan(tiny_model_dir, tmp_path, cli) -> None:
    plan = Plan.from_lists([4, 16, 2], [8, 0, 4])
    model = apply_plan(load_model(str(tiny_model_dir)).model, plan)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "run" / "adapter")
    (tmp_path / "run" / "plan.json").write_text(plan.to_json())
    built = assemble_run(tmp_path / "run")
    assert built.base is None
    with torch.no_grad():
        torch.testing.assert_close(built.model(IDS).logits, expected, atol=1e-6, rtol=1e-6)
    # --packed packs the base now, so the package holds it.
    code, _, err = cli("export", tmp_path / "run", "-o", tmp_path / "pkg", "--packed")
    assert code == 0, err
    again = assemble_run(tmp_path / "pkg")
    assert again.base == str(tmp_path / "pkg" / "base.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again.model(IDS).logits, expected, atol=1e-6, rtol=1e-6)


def test_export_merged_gpt2_keeps_conv1d(tiny_gpt2, word_tokenizer_factory, tmp_path, cli) -> None:
    tiny_gpt2.save_pretrained(tmp_path / "gpt2")
    word_tokenizer_factory().save_pretrained(tmp_path / "gpt2")
    plan = Plan.from_lists([4, 3], [4, 2], embed_bits=8, head_bits=8, group_size=32)
    model = load_model(str(tmp_path / "gpt2")).model
    structure = inspect_model(model)
    expected = _finish_run(apply_plan(model, plan), structure, tmp_path / "run", plan, q_proj=None)
    code, _, err = cli("export", tmp_path / "run", "-o", tmp_path / "out", "--dtype", "float32")
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, expected, atol=1e-4, rtol=1e-4)


# ----- DoRA and AdaLoRA -------------------------------------------------------------------
def _dora_run(folder: Path, run: Path) -> torch.Tensor:
    from peft import get_peft_model

    model = load_model(str(folder)).model
    structure = quantize_model_(model, PLAN)
    peft = get_peft_model(model, lora.lora_config(PLAN, structure, use_dora=True))
    return _finish_run(peft, structure, run, PLAN)


def _adalora_run(folder: Path, run: Path) -> torch.Tensor:
    """An AdaLoRA run whose saved rank_pattern keeps 3 of the 6 ranks of q_proj in block 0."""
    from peft import get_peft_model

    plan = Plan.from_lists([4, 16, 2], [4, 0, 4], group_size=32)
    model = load_model(str(folder)).model
    structure = quantize_model_(model, plan)
    variant = lora.AdapterVariant(
        kind="adalora", adalora_init_r=6, adalora_target_r=4, adalora_total_steps=100
    )
    lora.prepare_adalora_(model, sorted(plan.to_rank_pattern(structure)))
    peft = get_peft_model(model, lora.adalora_config(plan, structure, variant))
    kept = [True, False, True, True, False, False]
    pattern = {
        name.removeprefix("base_model.model.").removesuffix(".default"): [True] * 6
        for name, _ in peft.named_parameters()
        if "lora_E" in name
    }
    q_proj = "model.layers.0.self_attn.q_proj.lora_E"
    pattern[q_proj] = kept
    peft.peft_config["default"].rank_pattern = pattern
    expected = _finish_run(peft, structure, run, plan)  # as training ends: pruned ranks have E = 0
    with torch.no_grad():
        peft.get_submodule(f"base_model.model.{q_proj}")["default"][[1, 4, 5]] = 0
        expected = peft(IDS).logits
    (run / "plan.json").write_text(plan.to_json())
    return expected


@pytest.mark.parametrize("kind", ["dora", "adalora"])
def test_dora_and_adalora_runs(tiny_model_dir, tmp_path, cli, kind) -> None:
    if kind == "adalora" and not hasattr(lora, "prepare_adalora_"):
        pytest.skip("lora.py has no AdaLoRA on QuantLinear yet")
    run = tmp_path / "run"
    expected = (_dora_run if kind == "dora" else _adalora_run)(tiny_model_dir, run)
    info = read_adapter(run / "adapter")
    assert info.use_dora is (kind == "dora")
    assert info.peft_type == ("ADALORA" if kind == "adalora" else "LORA")
    if kind == "adalora":  # the saved rank_pattern's ranks, init_r where it keeps all
        assert info.ranks["model.layers.0.self_attn.q_proj"] == 3
        assert info.ranks["model.layers.2.mlp.up_proj"] == 6
    with torch.no_grad():
        torch.testing.assert_close(assemble_run(run).model(IDS).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged_run(run).model(IDS).logits, expected, atol=1e-4, rtol=1e-4)


# ----- qra eval --run ---------------------------------------------------------------------
def test_eval_run_uses_the_packed_base(trained, tmp_path, cli) -> None:
    from qradaptor.eval.suite import run_suite

    run, _ = trained
    out = tmp_path / "r.json"
    argv = ["--tasks", "ppl_wiki", "--limit", "2", "--seq-len", "32", "--device", "cpu", "-o", out]
    code, _, err = cli("eval", "--run", run, *argv)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["meta"]["run"] == str(run) and data["meta"]["base"] == str(run / "base.safetensors")
    assert data["meta"]["plan_hash"] == PLAN.plan_hash
    assert data["meta"]["provenance"]["format"] == "safetensors"
    assert data["meta"]["provenance"]["text"].startswith("model.safetensors stores 29 tensors (29 F32)")
    built = assemble_run(run)
    kwargs = dict(model_name="m", plan_hash="h", limit=2, seq_len=32, progress=False)
    (expected,) = run_suite(built.model, built.tokenizer, ["ppl_wiki"], **kwargs)
    assert data["results"][0]["value"] == pytest.approx(expected.value, rel=1e-6)


@pytest.mark.parametrize("extra", [["--plan", "uniform:4:8"], ["--adapter", "x"]])
def test_eval_run_excludes_plan_and_adapter(trained, cli, extra) -> None:
    run, _ = trained
    code, _, err = cli("eval", "--run", run, *extra, "--tasks", "ppl_wiki")
    assert code == 2 and f"do not also give {extra[0]}" in err and err.count("\n") == 1, err


def test_eval_run_bad_folder(tmp_path, cli) -> None:
    code, _, err = cli("eval", "--run", tmp_path, "--tasks", "ppl_wiki")
    assert code == 2 and "is not a training run" in err, err
