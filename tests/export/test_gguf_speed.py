"""benchmarks/gguf_speed.py: llama.cpp's prompt and generation tokens/s of exported files, side by side."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qradaptor.plan import Plan

from .conftest import make_run

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gguf_speed.py"


def _module():
    spec = importlib.util.spec_from_file_location("gguf_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_arguments_are_one_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _module().parse_args([str(tmp_path / "none.gguf")])
    assert "no such GGUF file" in capsys.readouterr().err
    (tmp_path / "a.gguf").write_bytes(b"")
    with pytest.raises(SystemExit):
        _module().parse_args([str(tmp_path / "a.gguf"), "--rounds", "0"])
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_two_exports_are_timed_side_by_side(tiny_gguf, tmp_path, cli, capsys) -> None:
    pytest.importorskip("llama_cpp")
    files = []
    for bits in (4, 8):
        run = make_run(
            tmp_path / f"u{bits}", tiny_gguf, Plan.uniform(4, bits, 0, group_size=32), adapter_seed=None
        )
        out = tmp_path / f"u{bits}.gguf"
        code, _, err = cli("export", run, "--format", "gguf", "-o", out)
        assert code == 0, err
        files.append(str(out))
    args = [*files, "--threads", "1", "--prompt-tokens", "8", "--new-tokens", "4", "--rounds", "2"]
    assert _module().main([*args, "--out", str(tmp_path / "speed.json")]) == 0
    table = capsys.readouterr().out
    assert "| u4.gguf |" in table and "| u8.gguf |" in table
    data = json.loads((tmp_path / "speed.json").read_text())
    assert [Path(r["file"]).name for r in data["rows"]] == ["u4.gguf", "u8.gguf"]
    assert all(r["gen_tok_s"] > 0 and r["prompt_tok_s"] > 0 for r in data["rows"])
    assert all(len(v) == 2 for v in data["rounds"].values())
