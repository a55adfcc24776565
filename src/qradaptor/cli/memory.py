"""``qra memory``: bytes of a plan on a model, per block and in total, without building it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from qradaptor.cli.common import format_bytes, load_structure, read_plan

if TYPE_CHECKING:
    from qradaptor.memory import MemoryReport
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
"""Bytes per unquantised weight for each --dtype."""
ADAPTER_BYTES = 4
"""PEFT keeps LoRA parameters in fp32."""


def _one_or_list(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def block_rows(structure: ModelStructure, plan: Plan, report: MemoryReport) -> list[dict[str, Any]]:
    """Per block: bits and rank (a list over its linears if they differ), weight and adapter bytes.

    Weight bytes are the block linears' codes, scales, zeros and biases.
    """
    rows = [
        {"block": b, "bits": [], "rank": [], "weight_bytes": 0, "adapter_bytes": 0}
        for b in range(structure.num_blocks)
    ]
    # plan_memory lists layers in iter_modules order.
    for (block, name, _), layer in zip(plan.iter_modules(structure), report.layers, strict=True):
        assert layer.path == structure.module_path(block, name)
        row = rows[block]
        row["bits"].append(layer.bits)
        row["rank"].append(layer.rank)
        row["weight_bytes"] += layer.weight_bytes + layer.bias_bytes
        row["adapter_bytes"] += layer.adapter_bytes
    for row in rows:
        row["bits"], row["rank"] = _one_or_list(row["bits"]), _one_or_list(row["rank"])
    return rows


def totals(report: MemoryReport) -> dict[str, int]:
    """Bytes by part; ``total`` equals ``report.total_bytes``."""
    return {
        "block_linears": report.linear_bytes,
        "embedding": report.embed_bytes,
        "head": report.head_bytes,
        "other": report.other_bytes,
        "adapters": report.adapter_bytes,
        "total": report.total_bytes,
    }


def verify_plan(model: str | None, structure: ModelStructure, plan: Plan) -> dict[str, Any]:
    """Builds the model in fp32 on CPU with ``plan`` applied and compares its bytes to the prediction."""
    import torch

    from qradaptor.build import apply_plan
    from qradaptor.memory import model_tensor_bytes, plan_memory
    from qradaptor.models.loading import load_model

    predicted = plan_memory(structure, plan, weight_bytes=4, adapter_bytes=ADAPTER_BYTES)
    built = apply_plan(load_model(model, dtype=torch.float32, device="cpu").model, plan)
    measured = model_tensor_bytes(built)
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    return {
        "dtype": "fp32",
        "predicted_bytes": predicted.total_bytes,
        "measured_bytes": measured,
        "predicted_trainable_params": predicted.adapter_params,
        "measured_trainable_params": trainable,
        "equal": measured == predicted.total_bytes and trainable == predicted.adapter_params,
    }


def _cell(value: int | list[int]) -> str:
    return str(value) if isinstance(value, int) else "mixed"


def _render(data: dict[str, Any]) -> str:
    plan = data["plan"]
    head = "tied to the embedding" if data["tied"] else f"head {plan['head_bits']}-bit"
    lines = [
        f"model     {data['model']} ({data['origin']}: {data['source']})",
        f"plan      {plan['name'] or '(unnamed)'}: group size {plan['group_size']}, {plan['quant_method']}, "
        f"alpha {plan['alpha']:g}, embedding {plan['embed_bits']}-bit, {head}",
        f"dtype     {data['dtype']} for unquantised weights, fp32 for adapters",
        "",
        f"{'block':>5} {'bits':>5} {'rank':>5} {'weights':>12} {'adapters':>12}",
    ]
    for row in data["blocks"]:
        lines.append(
            f"{row['block']:>5} {_cell(row['bits']):>5} {_cell(row['rank']):>5} "
            f"{format_bytes(row['weight_bytes']):>12} {format_bytes(row['adapter_bytes']):>12}"
        )
    t = data["totals"]
    lines += [""]
    for key, label in (
        ("block_linears", "block linears"),
        ("embedding", "embedding"),
        ("head", "head"),
        ("other", "other"),
        ("adapters", "adapters"),
        ("total", "total"),
    ):
        value = "(tied)" if key == "head" and data["tied"] else format_bytes(t[key])
        lines.append(f"{label:<18} {value:>12}")
    lines += [
        "",
        f"avg bits {data['avg_bits']:.3f} per block-linear weight (scales and zeros included)",
        f"avg rank {data['avg_rank']:g}",
        f"trainable params {data['trainable_params']:,}",
    ]
    if "training" in data:
        tr = data["training"]
        ckpt = "on" if tr["gradient_checkpointing"] else "off"
        lines += [
            "",
            f"training step estimate: batch {tr['batch_size']} x {tr['seq_len']} tokens, "
            f"gradient checkpointing {ckpt}, {tr['adapter']} adapters"
            + (" with dropout" if tr["lora_dropout"] else ""),
            # qra train's GPU setting; on a CPU it trains in fp32 (--dtype fp32 prices that).
            f"assumes one GPU: {data['dtype']} activations and unquantised weights, fp32 adapters, "
            "gradients and AdamW states; the CUDA context and allocator slack are not counted",
        ]
        for key, label in (
            ("weights", "weights"),
            ("gradients", "gradients"),
            ("optimizer", "AdamW states"),
            ("activations", "activations"),
            ("total", "total"),
        ):
            lines.append(f"{label:<18} {format_bytes(tr[key]):>12}")
    if "verify" in data:
        v = data["verify"]
        lines += [
            "",
            "verify: built in fp32 on CPU",
            *(
                f"{label:<10} {v[key + '_bytes']:>14,} bytes {v[key + '_trainable_params']:>12,} trainable"
                for key, label in (("predicted", "predicted"), ("measured", "measured"))
            ),
            "result: equal" if v["equal"] else "result: NOT equal",
        ]
    return "\n".join(lines)


def memory(
    model: str | None = None,
    *,
    plan: str,
    dtype: str = "bf16",
    train: bool = False,
    batch_size: int | None = None,
    seq_len: int | None = None,
    gradient_checkpointing: bool = False,
    lora_dropout: bool = False,
    adapter: str = "lora",
    verify: bool = False,
    as_json: bool = False,
) -> int:
    """Show the memory of a plan on a model: per block, in total, and for a training step.

    Weights and adapters are counted exactly as apply_plan stores them (packed codes plus a
    16-bit scale and zero per group); no weights are loaded unless --verify is given. Exit
    code 1 if --verify finds the built model differs from the prediction.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        plan: a plan JSON file (from qra plan), or uniform:BITS:RANK, e.g. uniform:4:16
        dtype: dtype of unquantised weights, biases and norms
        train: add the estimate of one LoRA training step (needs --batch-size and --seq-len)
        batch_size: sequences per training step
        seq_len: tokens per sequence
        gradient_checkpointing: estimate activations with gradient checkpointing
        lora_dropout: the adapters use dropout (qra train's default 0.05 does): one mask byte per
            adapted input element and token
        adapter: lora, dora or adalora: DoRA and AdaLoRA keep each adapted module's output for
            the backward (docs/TRAINING.md)
        verify: build the model (fp32, CPU) with the plan applied and compare its tensor bytes
            with the prediction
        as_json: print the same as JSON, with exact bytes
    """
    if train and (batch_size is None or seq_len is None):
        raise ValueError(
            f"--train needs --batch-size and --seq-len, got batch size {batch_size} and seq len {seq_len}"
        )
    training_only = gradient_checkpointing or lora_dropout or adapter != "lora"
    if not train and (batch_size is not None or seq_len is not None or training_only):
        raise ValueError(
            "--batch-size, --seq-len, --gradient-checkpointing, --lora-dropout and --adapter only apply "
            "with --train"
        )
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    given = read_plan(plan)  # a bad --plan fails before the model loads

    from qradaptor.memory import plan_memory, training_memory
    from qradaptor.plan import Plan

    resolved, structure = load_structure(model)
    the_plan = given if isinstance(given, Plan) else Plan.uniform(structure.num_blocks, *given)
    report = plan_memory(structure, the_plan, weight_bytes=DTYPE_BYTES[dtype], adapter_bytes=ADAPTER_BYTES)
    data: dict[str, Any] = {
        "source": resolved.source,
        "origin": resolved.origin,
        "model": structure.describe(),
        "tied": structure.tied,
        "plan": the_plan.to_dict(),
        "dtype": dtype,
        "weight_bytes": DTYPE_BYTES[dtype],
        "adapter_bytes": ADAPTER_BYTES,
        "blocks": block_rows(structure, the_plan, report),
        "totals": totals(report),
        "avg_bits": report.avg_bits,
        "avg_rank": report.avg_rank,
        "trainable_params": report.adapter_params,
    }
    if train:
        assert batch_size is not None and seq_len is not None
        step = training_memory(
            structure,
            report,
            batch_size=batch_size,
            seq_len=seq_len,
            act_bytes=DTYPE_BYTES[dtype],
            adapter_bytes=ADAPTER_BYTES,
            gradient_checkpointing=gradient_checkpointing,
            lora_dropout=lora_dropout,
            adapter=adapter,
        )
        data["training"] = {
            "batch_size": batch_size,
            "seq_len": seq_len,
            "gradient_checkpointing": gradient_checkpointing,
            "lora_dropout": lora_dropout,
            "adapter": adapter,
            "weights": step.weights,
            "gradients": step.gradients,
            "optimizer": step.optimizer,
            "activations": step.activations,
            "total": step.total,
        }
    if verify:
        data["verify"] = verify_plan(model, structure, the_plan)
    print(json.dumps(data, indent=2) if as_json else _render(data))
    return 0 if not verify or data["verify"]["equal"] else 1


VERB = memory


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra memory``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("--plan", required=True, metavar="FILE|uniform:BITS:RANK", help=helps["plan"])
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16", help=helps["dtype"])
    parser.add_argument("--train", action="store_true", help=helps["train"])
    parser.add_argument("--batch-size", type=int, metavar="B", help=helps["batch_size"])
    parser.add_argument("--seq-len", type=int, metavar="T", help=helps["seq_len"])
    parser.add_argument("--gradient-checkpointing", action="store_true", help=helps["gradient_checkpointing"])
    parser.add_argument("--lora-dropout", action="store_true", help=helps["lora_dropout"])
    parser.add_argument(
        "--adapter", choices=("lora", "dora", "adalora"), default="lora", help=helps["adapter"]
    )
    parser.add_argument("--verify", action="store_true", help=helps["verify"])
    parser.add_argument("--json", dest="as_json", action="store_true", help=helps["as_json"])
