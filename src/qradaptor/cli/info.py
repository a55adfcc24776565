"""``qra info``: what a model is made of, read from its config (no weights are loaded)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from qradaptor.cli.common import load_structure

if TYPE_CHECKING:
    from qradaptor.models.sources import ResolvedSource
    from qradaptor.models.structure import ModelStructure


def parameter_counts(structure: ModelStructure) -> dict[str, int]:
    """Parameters by part: block linears (weights and biases), embedding, head, other, total.

    A tied head shares the embedding's weight and counts 0, so ``total`` equals
    ``sum(p.numel() for p in model.parameters())``.
    """
    per_block = sum(i.numel + (i.out_features if i.bias else 0) for i in structure.linears)
    head = 0
    if structure.head_shape is not None and not structure.tied:
        vocab, hidden = structure.head_shape
        head = vocab * hidden + (vocab if structure.head_bias else 0)
    counts = {
        "block_linears": structure.num_blocks * per_block,
        "embedding": structure.embed_shape[0] * structure.embed_shape[1],
        "head": head,
        "other": structure.other_numel,
    }
    counts["total"] = sum(counts.values())
    return counts


def structure_dict(resolved: ResolvedSource, structure: ModelStructure) -> dict[str, Any]:
    """Everything ``qra info`` reports, JSON-ready."""
    return {
        "source": resolved.source,
        "origin": resolved.origin,
        "model_type": structure.model_type,
        "signature": structure.signature,
        "num_blocks": structure.num_blocks,
        "blocks_path": structure.blocks_path,
        "linears": [
            {
                "name": i.name,
                "in_features": i.in_features,
                "out_features": i.out_features,
                "bias": i.bias,
                "kind": i.kind,
            }
            for i in structure.linears
        ],
        "embedding": {"path": structure.embed_path, "shape": list(structure.embed_shape)},
        "head": None
        if structure.head_path is None
        else {
            "path": structure.head_path,
            "shape": list(structure.head_shape or ()),
            "bias": structure.head_bias,
        },
        "tied": structure.tied,
        "parameters": parameter_counts(structure),
    }


def _render(data: dict[str, Any]) -> str:
    lines = [
        f"source       {data['source']} ({data['origin']})",
        f"model type   {data['model_type']} (signature {data['signature']})",
        f"blocks       {data['num_blocks']} at {data['blocks_path']}",
        "",
        f"linears of one block ({len(data['linears'])}):",
        f"  {'name':<24} {'in':>7} {'out':>7}  {'bias':<5} kind",
    ]
    for i in data["linears"]:
        bias = "yes" if i["bias"] else "no"
        lines.append(f"  {i['name']:<24} {i['in_features']:>7} {i['out_features']:>7}  {bias:<5} {i['kind']}")
    embed, head = data["embedding"], data["head"]
    lines += ["", f"embedding    {embed['path']} {tuple(embed['shape'])}"]
    if head is None:
        lines.append("head         none")
    else:
        tied = ", tied to the embedding" if data["tied"] else ""
        bias = ", with bias" if head["bias"] else ""
        lines.append(f"head         {head['path']} {tuple(head['shape'])}{bias}{tied}")
    lines += ["", "parameters:"]
    for key, label in (
        ("block_linears", "block linears"),
        ("embedding", "embedding"),
        ("head", "head" + (" (tied)" if data["tied"] else "")),
        ("other", "other (norms, ...)"),
        ("total", "total"),
    ):
        lines.append(f"  {label:<20} {data['parameters'][key]:>14,}")
    return "\n".join(lines)


def info(model: str | None = None, *, as_json: bool = False) -> int:
    """Show a model's blocks, their linear layers, embedding, head and parameter counts.

    Reads only the model's config, so it is fast and needs no weights.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        as_json: print the same as JSON
    """
    resolved, structure = load_structure(model)
    data = structure_dict(resolved, structure)
    print(json.dumps(data, indent=2) if as_json else _render(data))
    return 0


VERB = info


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra info``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("--json", dest="as_json", action="store_true", help=helps["as_json"])
