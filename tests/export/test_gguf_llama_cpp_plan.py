"""A ``--serve llama.cpp`` knapsack plan through ``qra export --format gguf``: every block tensor
in the file at exactly the bytes ``memory.plan_memory`` predicts for it, codes unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import MODEL_ARCH, GGUFReader, get_tensor_name_map

from qradaptor.memory import plan_memory
from qradaptor.models.loading import load_config
from qradaptor.models.structure import structure_from_config
from qradaptor.plan import Plan

from .conftest import BLOCKS, make_run

BYTES_PER_32 = {"Q4_0": 18, "Q5_0": 22, "Q8_0": 34}
"""GGUF's own block sizes, written out: a float16 scale and 32 codes of 4, 5 or 8 bits."""


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    pass


@pytest.fixture(scope="module")
def profile(tiny_gguf, tmp_path_factory) -> Path:
    """A sensitivity.json of the tiny GGUF at bits 4,5,8 (group 32, symmetric)."""
    from qradaptor.cli import main

    folder = tmp_path_factory.mktemp("profile")
    argv = [str(tiny_gguf), "--bits", "4,5,8", "--samples", "2", "--seq-len", "8", "--device", "cpu"]
    quant = ["--group-size", "32", "--quant-method", "symmetric"]
    assert main(["profile", *argv, *quant, "-o", str(folder)]) == 0
    return folder / "sensitivity.json"


@pytest.mark.parametrize("budget", ["5.2bits", "11bits"])
def test_the_file_holds_the_planned_bytes_of_every_block_tensor(
    cli, tiny_gguf, profile, tmp_path, budget
) -> None:
    argv = ["--baseline", "knapsack", "--serve", "llama.cpp", "--budget", budget, "--rank", "0"]
    code, out, err = cli("plan", tiny_gguf, *argv, "--sensitivity", profile)
    assert code == 0, err
    plan = Plan.from_json(out)
    assert len(set(plan.block_bits())) > 1  # a mixed plan, 16 bits among them at 11 bits
    assert (16 in plan.block_bits()) == (budget == "11bits")
    run = make_run(tmp_path / "run", tiny_gguf, plan)
    code, log, err = cli("export", run, "--format", "gguf", "-o", tmp_path / "k.gguf")
    assert code == 0, err
    blocks = BLOCKS * 7
    assert f"llama.cpp-exact plan: {blocks} of {blocks} block tensors written unchanged" in log

    structure = structure_from_config(load_config(str(tiny_gguf)))
    predicted = {layer.path: layer.weight_bytes for layer in plan_memory(structure, plan).layers}
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, BLOCKS)
    written = {t.name: t for t in GGUFReader(tmp_path / "k.gguf").tensors}
    bits = {structure.module_path(b, n): s.bits for b, n, s in plan.iter_modules(structure)}
    for path, nbytes in predicted.items():
        tensor = written[names.get_name(f"{path}.weight", try_suffixes=(".weight",))]
        assert int(tensor.n_bytes) == nbytes, path
        kind = tensor.tensor_type.name
        expected = {4: "Q4_0", 5: "Q5_0", 8: "Q8_0", 16: "F16"}[bits[path]]
        assert kind == expected, path
        per_weight = 2 if kind == "F16" else BYTES_PER_32[kind] / 32
        assert nbytes == int(tensor.n_elements) * per_weight, path  # the memory model is GGUF's
    record = json.loads((tmp_path / "k.gguf.json").read_text())
    assert record["llama_cpp_as_planned"] == {
        "plan": "llama.cpp-exact",
        "block_tensors": blocks,
        "unchanged_at_planned_bytes": blocks,
    }
    assert record["planned_tensor_bytes"]["written"] - record["planned_tensor_bytes"]["plan"] == (
        sum(int(written[n].n_bytes) for n in ("token_embd.weight",))
        - plan_memory(structure, plan).embed_bytes
    )  # only the embedding, not a block tensor, differs from the plan (the source's Q8_0 kept)


def test_another_plan_is_recorded_as_not_llama_cpp_exact(cli, tiny_gguf, tmp_path) -> None:
    plan = Plan.from_lists([4, 3, 8, 5], [0] * BLOCKS, group_size=32, quant_method="symmetric", name="p3")
    run = make_run(tmp_path / "run", tiny_gguf, plan)
    code, log, err = cli("export", run, "--format", "gguf", "-o", tmp_path / "p.gguf")
    assert code == 0, err
    assert "llama.cpp-exact" not in log
    served = json.loads((tmp_path / "p.gguf.json").read_text())["llama_cpp_as_planned"]
    assert served["plan"].startswith("plan p3 gives model.layers.1.self_attn.q_proj 3 bits")
    assert served["unchanged_at_planned_bytes"] == (BLOCKS - 1) * 7  # the 3-bit block went to Q4_0
