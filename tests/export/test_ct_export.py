"""``qra export --format compressed-tensors``: loaded back by transformers and by compressed-tensors'
own decompressor, compared with the run; refusals leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qradaptor.plan import LayerSpec, Plan
from qradaptor.runs import merged_run

from .conftest import BLOCKS, make_run

UNIFORM = Plan.uniform(BLOCKS, 4, 4, group_size=32, quant_method="rtn", name="u4")
"""Every block at 4 bits with a random adapter, merged and re-quantised: one config group."""
MIXED = Plan.from_lists([4, 8, 16, 4], [4, 0, 0, 0], group_size=32, quant_method="hqq", name="mixed")
"""Block 0 merged (hqq refit), block 1 our 8-bit codes' grid, block 2 dense, block 3 4-bit codes' grid."""
IDS = torch.tensor([[0, 5, 26, 3, 29, 7, 1, 2]])


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    pass


@pytest.fixture(scope="module")
def runs(tiny_gguf, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ct-runs")
    return {plan.name: make_run(root / plan.name, tiny_gguf, plan) for plan in (UNIFORM, MIXED)}


def _export(cli, run: Path, out: Path, *extra: str) -> dict:
    code, stdout, err = cli("export", run, "--format", "compressed-tensors", "-o", out, *extra)
    assert code == 0, err
    assert f"per-linear record in {out / 'qradaptor_export.json'}" in stdout
    return json.loads((out / "qradaptor_export.json").read_text())


def _requantised_model(run: Path, record: dict) -> torch.nn.Module:
    """The merged run with each quantised linear replaced by what the record says was written:
    the reference the folder must reproduce up to float32 summation order."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    from qradaptor.export.ct_codes import scheme_args

    model = merged_run(run).model
    state = load_file(str(Path(record["folder"]) / "model.safetensors"))
    with torch.no_grad():
        for linear in record["linears"]:
            path = linear["module"]
            args = QuantizationArgs(**scheme_args(linear["bits"], linear["group_size"]))
            parts = {k: state[f"{path}.{k}"] for k in ("weight_packed", "weight_scale", "weight_zero_point")}
            parts["weight_shape"] = state[f"{path}.weight_shape"]
            weight = PackedQuantizationCompressor.decompress(
                parts, QuantizationScheme(targets=[path], weights=args)
            )
            model.get_submodule(path).weight.copy_(weight["weight"])
    return model


def test_one_bit_width_loads_in_transformers_with_the_run_s_logits(runs, tiny_gguf, tmp_path, cli) -> None:
    pytest.importorskip("compressed_tensors")
    from qradaptor.export.ct_readback import decompressed_model, transformers_model

    out = tmp_path / "u4"
    record = _export(cli, runs["u4"], out, "--dtype", "float32") | {"folder": str(out)}
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    (group,) = config["config_groups"].values()
    assert group["weights"] | {"observer": None} == {
        "num_bits": 4,
        "type": "int",
        "symmetric": False,
        "strategy": "group",
        "group_size": 32,
        "dynamic": False,
        "observer": None,
    } | ({"actorder": group["weights"]["actorder"]} if "actorder" in group["weights"] else {})
    assert len(group["targets"]) == 7 * BLOCKS and "model.layers.0.self_attn.q_proj" in group["targets"]
    assert config["ignore"] == ["lm_head"]
    assert record["how"] == {"requantised": 7 * BLOCKS} and record["adapter"] == "merged"
    # Fitted to W_0 + the adapter's change: one quantisation from that target, two from the run.
    assert record["refit"] == "source"
    assert all(lin["target_error"] < lin["rel_error"] for lin in record["linears"])
    loaded = transformers_model(out, torch.float32)
    read = decompressed_model(out)
    with torch.no_grad():
        served, reference = loaded(IDS).logits, _requantised_model(runs["u4"], record)(IDS).logits
        ours, decompressed = merged_run(runs["u4"]).model(IDS).logits, read(IDS).logits
    # What transformers computes is the re-quantised weights exactly (float32 export: dense
    # weights and float16-valued scales held exactly), so only summation order differs.
    assert (served - reference).abs().max() < 1e-5
    assert torch.equal(served, decompressed)  # transformers and ct_readback dequantise alike
    # Against the run, the gap is a second 4-bit quantisation (of W_0 + the adapter's change):
    # about as far from the run as the run is from the unquantised model, not further.
    from qradaptor.models.loading import load_model

    with torch.no_grad():
        quantising = (load_model(str(tiny_gguf)).model(IDS).logits - ours).abs().max()
    assert max(lin["rel_error"] for lin in record["linears"]) < 0.15
    assert 0 < (served - ours).abs().max() < 1.5 * quantising


def test_integer_zeros_are_written_as_our_codes_with_the_run_s_logits(tiny_gguf, tmp_path, cli) -> None:
    """A base whose zeros are integers maps exactly: the folder computes what the run does."""
    pytest.importorskip("compressed_tensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    from qradaptor.export.ct_readback import decompressed_model

    plan = Plan.from_lists([4, 8, 16, 4], [0] * 4, group_size=32, quant_method="rtn", name="exact")
    run = make_run(tmp_path / "exact", tiny_gguf, plan)
    with safe_open(str(run / "base.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key, value in tensors.items():
        if key.endswith(".zero"):  # codes stay valid; the run's model is now on an integer grid
            bits = 8 if ".layers.1." in key else 4
            tensors[key] = value.float().round().clamp(0, (1 << bits) - 1).half()
    save_file(tensors, str(run / "base.safetensors"), metadata=meta)
    out = tmp_path / "ct"
    record = _export(cli, run, out, "--dtype", "float32")
    assert record["how"] == {"codes": 21} and record["max_rel_error"]["rel_error"] < 1e-6
    with torch.no_grad():
        served, ours = decompressed_model(out)(IDS).logits, merged_run(run).model(IDS).logits
    assert (served - ours).abs().max() < 1e-5


def test_mixed_plan_reads_back_scheme_by_scheme(runs, tmp_path, cli) -> None:
    pytest.importorskip("compressed_tensors")
    from qradaptor.export.ct_readback import decompressed_model, transformers_model

    out = tmp_path / "mixed"
    record = _export(cli, runs["mixed"], out)  # float16: the default
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert sorted(config["config_groups"]) == ["int4_g32", "int8_g32"]
    assert config["config_groups"]["int8_g32"]["targets"][0] == "model.layers.1.self_attn.q_proj"
    assert config["ignore"][:1] == ["model.layers.2.self_attn.q_proj"] and len(config["ignore"]) == 8
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    errors = {lin["module"]: lin["rel_error"] for lin in record["linears"]}
    read, ours = decompressed_model(out).state_dict(), merged_run(runs["mixed"]).model.state_dict()
    for key, weight in ours.items():
        module = key.removesuffix(".weight")
        rel = float((read[key] - weight).norm() / weight.norm())
        if module in errors:
            # compressed-tensors dequantises in the scales' dtype (float16 here): the record's
            # float32 figure moves by at most the float16 rounding, 2**-11 / sqrt(3) rms.
            assert rel == pytest.approx(errors[module], abs=3e-4), key
            assert rel < (0.01 if ".layers.1." in key else 0.12), key
        else:  # dense: float16 rounding only
            assert rel < 1e-3, key
    with pytest.raises(ValueError, match="has 2 config groups"):
        transformers_model(out)


def test_refit_merged_fits_the_run_s_own_weights(runs, tmp_path, cli) -> None:
    pytest.importorskip("compressed_tensors")
    source = _export(cli, runs["mixed"], tmp_path / "source")
    merged = _export(cli, runs["mixed"], tmp_path / "merged", "--refit", "merged")
    assert (source["refit"], merged["refit"]) == ("source", "merged")
    by_module = {lin["module"]: lin for lin in source["linears"]}
    for lin in merged["linears"]:
        assert lin["target_error"] == lin["rel_error"]  # the target is the run's weight
        if ".layers.1." in lin["module"]:  # 8 bits: re-gridding costs less than a fresh fit of W_0
            assert lin["rel_error"] < by_module[lin["module"]]["rel_error"]


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (
            Plan.from_lists([4, 2, 8, 16], [0] * 4, group_size=32),
            "gives model.layers.1.self_attn.q_proj 2 bits",
        ),
        (
            Plan.from_lists([4, 4, 6, 4], [0] * 4, group_size=32),
            "gives model.layers.2.self_attn.q_proj 6 bits",
        ),
        (
            Plan(
                {
                    f"{b}.self_attn.{p}_proj": LayerSpec(8 if (b, p) == (3, "v") else 4, 0)
                    for b in range(4)
                    for p in "qkv"
                },
                4,
                group_size=32,
            ),
            "layers.3.self_attn.q_proj 4 bits but model.layers.3.self_attn.v_proj 8 bits: vLLM fuses",
        ),
    ],
)
def test_plans_vllm_cannot_serve_are_refused_before_anything_is_written(
    tiny_gguf, tmp_path, cli, plan, message
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(plan.to_json())
    (run / "train.json").write_text(json.dumps({"model": str(tiny_gguf)}))
    code, _, err = cli("export", run, "--format", "compressed-tensors", "-o", tmp_path / "out")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no folder, no temp


def test_existing_output_needs_force(runs, tmp_path, cli) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    code, _, err = cli("export", runs["u4"], "--format", "compressed-tensors", "-o", out)
    assert code == 2 and "already exists; pass --force" in err and (out / "old").read_text() == "old"
    code, _, err = cli(
        "export", runs["u4"], "--format", "compressed-tensors", "-o", out, "--adapter", "separate"
    )
    assert code == 2 and "merges the adapter" in err
    pytest.importorskip("compressed_tensors")
    assert cli("export", runs["u4"], "--format", "compressed-tensors", "-o", out, "--force")[0] == 0
    assert "old" not in {p.name for p in out.iterdir()} and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_symmetric_codes_go_in_unchanged_with_the_run_s_logits(tiny_gguf, tmp_path, cli, dtype) -> None:
    """A symmetric plan is compressed-tensors' symmetric scheme as it is: no zero point, our
    codes and scales, the run's logits up to float rounding (transformers' own loader)."""
    pytest.importorskip("compressed_tensors")
    from safetensors import safe_open

    from qradaptor.export.ct_readback import decompressed_model, transformers_model

    plan = Plan.uniform(BLOCKS, 4, 0, group_size=32, quant_method="symmetric", name="sym4")
    run = make_run(tmp_path / "sym4", tiny_gguf, plan)
    out = tmp_path / "ct"
    record = _export(cli, run, out, "--dtype", dtype)
    assert record["how"] == {"codes": 7 * BLOCKS} and record["max_rel_error"]["rel_error"] == 0.0
    (group,) = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert group["weights"]["symmetric"] is True and group["weights"]["num_bits"] == 4
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any(k.endswith("weight_zero_point") for k in f.keys())  # noqa: SIM118
    with torch.no_grad():
        served, ours = transformers_model(out, torch.float32)(IDS).logits, merged_run(run).model(IDS).logits
        read = decompressed_model(out)(IDS).logits
    gap = (served - ours).abs().max()
    # float32: the same weights exactly, summation order only; float16: every weight and the
    # dense tensors rounded once to float16 (compressed-tensors multiplies in the scales' dtype).
    assert gap < (1e-5 if dtype == "float32" else 2e-2), gap
    assert torch.equal(served, read)


def test_symmetric_mixed_plan_and_merged_adapter(tiny_gguf, tmp_path, cli) -> None:
    pytest.importorskip("compressed_tensors")
    from qradaptor.export.ct_readback import decompressed_model

    plan = Plan.from_lists([4, 8, 16, 4], [4, 0, 0, 0], group_size=32, quant_method="symmetric", name="sym")
    run = make_run(tmp_path / "sym", tiny_gguf, plan)
    out = tmp_path / "ct"
    record = _export(cli, run, out, "--dtype", "float32")
    how = {lin["module"]: lin["how"] for lin in record["linears"]}
    # block 0 carries a merged adapter: off the grid, fitted again by the symmetric rule
    assert {h for m, h in how.items() if ".layers.0." in m} == {"requantised"}
    assert {h for m, h in how.items() if ".layers.0." not in m} == {"codes"}
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert all(g["weights"]["symmetric"] for g in config["config_groups"].values())
    read, ours = decompressed_model(out).state_dict(), merged_run(run).model.state_dict()
    for key in ("model.layers.1.mlp.down_proj.weight", "model.layers.3.self_attn.q_proj.weight"):
        assert torch.equal(read[key], ours[key]), key  # codes unchanged: bit for bit in float32
    errors = [lin["rel_error"] for lin in record["linears"] if ".layers.0." in lin["module"]]
    assert 0 < max(errors) < 0.15
