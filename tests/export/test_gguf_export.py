"""``qra export --format gguf``: read back with gguf, dequantised, compared with the merged run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from qradaptor.export.gguf_types import llama_rows
from qradaptor.plan import Plan
from qradaptor.runs import merged_run

from .conftest import HEADS, KV_HEADS, make_run

MIXED = Plan.from_lists([4, 2, 8, 16], [4, 0, 0, 4], embed_bits=8, head_bits=8, group_size=32, name="mixed")
"""Block 0: adapter merged, re-quantised to Q4_1; block 1: 2-bit codes as Q4_1 unchanged (Q2_K
falls back: rows of 64 and 128 inputs); block 2: Q8_0; block 3: 16 bits with an adapter, F16;
embedding: Q8_0. K-quants are tested on a wider model in test_gguf_kquant_export.py."""
EXACT = Plan.from_lists([4, 2, 3, 16], [0, 0, 0, 0], group_size=64, quant_method="hqq", name="exact")
"""Every weight written as our codes or the source's bytes."""
EXPECTED = {"blk.0": ("Q4_1", "requantised"), "blk.1": ("Q4_1", "codes"), "blk.2": ("Q8_0", "requantised")}
EXPECTED["blk.3"] = ("F16", "dense")
BOUND = {"Q4_1": 0.12, "Q8_0": 0.01, "F16": 1e-3}
"""Largest relative error of a re-quantised tensor of each type (Gaussian weights)."""


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    pass


@pytest.fixture(scope="module")
def mixed(tiny_gguf, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "mixed", tiny_gguf, MIXED)


def _merged_weights(run: Path) -> dict[str, torch.Tensor]:
    """GGUF name -> the merged run's weight, rows in llama.cpp's order."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, 4)
    out = {}
    for key, value in merged_run(run).model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight",))
        heads = {"attn_q": HEADS, "attn_k": KV_HEADS}.get(str(name).split(".")[-2])
        out[str(name)] = llama_rows(value, heads) if heads else value
    return out


def _read_back(path: Path) -> dict[str, tuple[str, torch.Tensor]]:
    reader = GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        out[t.name] = (t.tensor_type.name, torch.from_numpy(np.array(values, dtype=np.float32)))
    return out


def test_every_tensor_has_the_plan_type_and_round_trips(mixed, tiny_gguf, tmp_path, cli) -> None:
    out = tmp_path / "model.gguf"
    code, stdout, err = cli("export", mixed, "--format", "gguf", "-o", out)
    assert code == 0, err
    assert "wrote GGUF" in stdout and "28 Q4_1" not in stdout
    back, merged = _read_back(out), _merged_weights(mixed)
    record = {t["name"]: t for t in json.loads((tmp_path / "model.gguf.json").read_text())["tensors"]}
    assert set(back) == {t.name for t in GGUFReader(tiny_gguf).tensors} == set(record)
    for name, (type_name, values) in back.items():
        rel = float((values - merged[name]).norm() / merged[name].norm())
        assert record[name]["rel_error"] == pytest.approx(rel, rel=1e-4, abs=1e-7), name
        if name.startswith("blk.") and "norm" not in name:
            expected_type, how = EXPECTED[name[:5]]
            assert (type_name, record[name]["how"]) == (expected_type, how), name
            assert rel < (1e-3 if how == "codes" else BOUND[type_name]), (name, rel)
        elif name == "token_embd.weight":
            assert (type_name, record[name]["how"]) == ("Q8_0", "requantised") and rel < BOUND["Q8_0"]
        else:  # norms: the source's bytes
            assert type_name == "F32" and record[name]["how"] == "source" and rel == 0.0, name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_merged_adapter_can_go_into_a_wider_type(mixed, tmp_path, cli) -> None:
    # Block 0's weights moved off their 4-bit grid when the adapter was merged: Q5_1 (a 5-bit
    # re-fit) keeps more of them than the default Q4_1 re-fit; block 1's 2-bit codes go to F16.
    errors = {}
    for name, types in (("default", []), ("wide", ["--gguf-types", "4=Q5_1,2=F16"])):
        code, _, err = cli("export", mixed, "--format", "gguf", "-o", tmp_path / f"{name}.gguf", *types)
        assert code == 0, err
        sidecar = json.loads((tmp_path / f"{name}.gguf.json").read_text())
        errors[name] = {t["name"]: t for t in sidecar["tensors"]}
    assert sidecar["type_map"]["4"] == "Q5_1" and sidecar["type_map"]["2"] == "F16"
    wide, default = errors["wide"], errors["default"]
    for name, record in wide.items():
        if name.startswith("blk.0.") and "norm" not in name:
            assert (record["type"], record["how"]) == ("Q5_1", "requantised"), name
            assert record["rel_error"] < default[name]["rel_error"] / 1.5, name
        if name.startswith("blk.1.") and "norm" not in name:
            assert (record["type"], record["how"]) == ("F16", "dense") and record["rel_error"] < 1e-3, name
            assert record["nbytes"] > default[name]["nbytes"], name


def test_metadata_tokenizer_and_chat_template_are_the_source_s(mixed, tiny_gguf, tmp_path, cli) -> None:
    out = tmp_path / "model.gguf"
    assert cli("export", mixed, "--format", "gguf", "-o", out)[0] == 0
    source, written = GGUFReader(tiny_gguf).fields, GGUFReader(out).fields
    for name, field in source.items():
        if not name.startswith("GGUF.") and name != "general.file_type":
            assert written[name].contents() == field.contents(), name
    assert written["tokenizer.chat_template"].contents().startswith("{% for m in messages %}")
    assert written["qradaptor.plan_hash"].contents() == MIXED.plan_hash


def test_exact_plan_loads_back_with_the_run_s_logits(tiny_gguf, tmp_path, cli) -> None:
    from qradaptor.models.loading import load_model

    run = make_run(tmp_path / "exact", tiny_gguf, EXACT)
    out = tmp_path / "exact.gguf"
    assert cli("export", run, "--format", "gguf", "-o", out)[0] == 0
    record = json.loads((tmp_path / "exact.gguf.json").read_text())
    assert record["how"] == {"codes": 21, "source": 17} and record["types"]["Q4_1"] == 21
    assert record["max_rel_error"]["rel_error"] < 1e-3
    ids = torch.tensor([[0, 5, 26, 3, 29, 7, 1, 2]])
    with torch.no_grad():
        expected = merged_run(run).model(ids).logits
        served = load_model(str(out)).model(ids).logits  # transformers reads the GGUF, un-permuting q/k
        unquantised = load_model(str(tiny_gguf)).model(ids).logits
    # Only the float16 rounding of each block's offset differs: far below what quantising did.
    gap, quantising = (served - expected).abs().max(), (unquantised - expected).abs().max()
    assert gap < 5e-3 and gap < quantising / 20, (gap, quantising)


def test_force_replaces_and_nothing_is_left_half_written(mixed, tmp_path, cli) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    code, _, err = cli("export", mixed, "--format", "gguf", "-o", out)
    assert code == 2 and "already exists; pass --force" in err and out.read_bytes() == b"old"
    code, _, err = cli("export", mixed, "--format", "gguf", "-o", out, "--force")
    assert code == 0, err
    assert out.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.gguf",
        "model.gguf.json",
    ]


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        ("none", ["{tmp}", "-o", "{tmp}/m.gguf"], "is not a training run: it has no plan.json"),
        ("one-bit", ["{tmp}/run", "-o", "{tmp}/m.gguf"], "has 1 bits, which have no GGUF type"),
        ("no-adapter", ["{tmp}/run", "-o", "{tmp}/m.gguf"], "has no adapter/ folder although its plan"),
        ("hf", ["{tmp}/run", "-o", "{tmp}/m.gguf"], "which is not one yet: export --merged"),
        ("mixed", ["{run}", "-o", "{tmp}/m.gguf", "--packed"], "--merged and --packed are for --format hf"),
        ("mixed", ["{run}", "-o", "{tmp}", "--force"], "is a folder; give the .gguf file"),
        ("mixed", ["{run}", "-o", "{run}/m.gguf"], "must lie outside the run folder"),
    ],
)
def test_bad_input_is_one_clear_error(
    mixed, tiny_gguf, tiny_model_dir, tmp_path, cli, setup, argv, message
) -> None:
    if setup in ("one-bit", "no-adapter", "hf"):  # a run folder put together by hand
        run = tmp_path / "run"
        run.mkdir()
        plans = {"one-bit": Plan.from_lists([4, 1, 16, 8], [0] * 4, group_size=32), "no-adapter": MIXED}
        plans["hf"] = Plan.from_lists([4, 2, 16], [0] * 3, group_size=32)
        (run / "plan.json").write_text(plans[setup].to_json())
        source = tiny_model_dir if setup == "hf" else tiny_gguf
        (run / "train.json").write_text(json.dumps({"model": str(source)}))
    fill = lambda s: s.format(tmp=tmp_path, run=mixed)  # noqa: E731
    code, _, err = cli("export", "--format", "gguf", *map(fill, argv))
    assert code == 2 and fill(message) in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("*.gguf*")) and not list(mixed.glob("*.gguf*"))


def test_separate_adapter_adds_back_to_the_merged_run(mixed, tmp_path, cli) -> None:
    out = tmp_path / "model.gguf"
    code, stdout, err = cli("export", mixed, "--format", "gguf", "-o", out, "--adapter", "separate")
    assert code == 0, err
    assert f"LoRA adapter in {tmp_path / 'model.lora.gguf'}" in stdout
    base, merged = _read_back(out), _merged_weights(mixed)
    record = {t["name"]: t for t in json.loads((tmp_path / "model.gguf.json").read_text())["tensors"]}
    assert {record[f"blk.{i}.attn_q.weight"]["how"] for i in (0, 1)} == {"codes"}  # base as trained
    assert record["blk.3.ffn_up.weight"]["how"] == "source"
    reader = GGUFReader(tmp_path / "model.lora.gguf")
    fields = {name: reader.fields[name].contents() for name in ("general.type", "adapter.type")}
    assert fields == {"general.type": "adapter", "adapter.type": "lora"}
    alpha = reader.fields["adapter.lora.alpha"].contents()
    assert alpha == MIXED.alpha
    lora = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors}
    assert len(lora) == 2 * 14  # blocks 0 and 3 have adapters
    for name in {n.rsplit(".", 1)[0] for n in lora}:
        a, b = lora[f"{name}.lora_a"], lora[f"{name}.lora_b"]  # (rank, in), (out, rank)
        assert a.shape[0] == b.shape[1] == 4
        served = base[name][1] + alpha / a.shape[0] * b @ a  # what llama.cpp computes with
        rel = float((served - merged[name]).norm() / merged[name].norm())
        assert rel < (1e-3 if name.startswith("blk.0") else 1e-5), (name, rel)


def test_dora_has_no_llama_cpp_adapter(mixed, tmp_path) -> None:
    import shutil

    from qradaptor.export.gguf_lora import check_lora_adapter

    shutil.copytree(mixed / "adapter", tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="is DoRA, which llama.cpp cannot apply at run time"):
        check_lora_adapter(str(tmp_path / "adapter"))


@pytest.mark.parametrize("adapter", ["merged", "separate"])
def test_llama_cpp_serves_the_run(mixed, tiny_gguf, tmp_path, cli, adapter) -> None:
    """llama.cpp itself reads the file and applies the adapter file (skipped without llama-cpp-python)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from qradaptor.models.loading import load_model

    out = tmp_path / "model.gguf"
    assert cli("export", mixed, "--format", "gguf", "-o", out, "--adapter", adapter)[0] == 0
    lora = {"lora_path": str(tmp_path / "model.lora.gguf")} if adapter == "separate" else {}
    llm = llama_cpp.Llama(str(out), n_ctx=16, logits_all=True, n_threads=1, verbose=False, **lora)
    ids = [0, 5, 26, 3, 29, 7, 1, 2]
    llm.eval(ids)
    served = torch.tensor(np.asarray(llm.scores[: len(ids)]))
    with torch.no_grad():
        run = merged_run(mixed).model(torch.tensor([ids])).logits[0]
        read = load_model(str(out)).model(torch.tensor([ids])).logits[0]
        unquantised = load_model(str(tiny_gguf)).model(torch.tensor([ids])).logits[0]
    quantising = (unquantised - run).abs().max()  # what the plan did to the model: 2.8
    if adapter == "merged":  # llama.cpp computes what transformers computes from the same file
        assert (served - read).abs().max() < quantising / 20  # (its activations are 8-bit: 0.04)
    else:  # base + adapter in llama.cpp is the run; the base alone (read) is far from it
        assert (served - run).abs().max() < quantising / 20
        assert (served - read).abs().max() > 10 * (served - run).abs().max()


SYMMETRIC = Plan.from_lists(
    [4, 5, 8, 3], [0, 0, 0, 0], embed_bits=8, head_bits=8, group_size=32, quant_method="symmetric", name="sym"
)
"""llama.cpp's own types: 4 -> Q4_0, 5 -> Q5_0, 8 -> Q8_0 (the tied embedding too), 3 -> Q4_0."""


def test_symmetric_codes_are_written_unchanged_as_q4_0_q5_0_q8_0(tiny_gguf, tmp_path, cli) -> None:
    run = make_run(tmp_path / "sym", tiny_gguf, SYMMETRIC)
    out = tmp_path / "sym.gguf"
    code, _, err = cli("export", run, "--format", "gguf", "-o", out)
    assert code == 0, err
    record = json.loads((tmp_path / "sym.gguf.json").read_text())
    assert record["how"] == {"codes": 29, "source": 9}  # the norms: the source's bytes
    assert record["types"] == {"Q4_0": 14, "Q5_0": 7, "Q8_0": 8, "F32": 9}
    assert record["max_rel_error"]["rel_error"] == 0.0
    back, merged = _read_back(out), _merged_weights(run)
    for name, (_, values) in back.items():  # every tensor the run's, bit for bit
        assert torch.equal(values.view(torch.int32), merged[name].float().view(torch.int32)), name
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(out), n_ctx=16, logits_all=True, n_threads=1, verbose=False)
    ids = [0, 5, 26, 3, 29, 7, 1, 2]
    llm.eval(ids)
    served = torch.tensor(np.asarray(llm.scores[: len(ids)]))
    with torch.no_grad():
        expected = merged_run(run).model(torch.tensor([ids])).logits[0]
    from qradaptor.models.loading import load_model

    with torch.no_grad():
        unquantised = load_model(str(tiny_gguf)).model(torch.tensor([ids])).logits[0]
    # llama.cpp's Q4_0/Q5_0/Q8_0 kernels quantise activations to 8 bits: close (0.05), not
    # equal, and far nearer the run than the unquantised model is (0.63).
    assert (served - expected).abs().max() < (unquantised - expected).abs().max() / 10
