"""``qra plan``: write a uniform or hand-made plan, stamped for a model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from qradaptor.cli.common import (
    QUANT_METHODS,
    check_output,
    load_structure,
    parse_int_list,
    write_text_atomic,
)

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure


def _per_block(values: list[int], option: str, num_blocks: int) -> list[int]:
    if len(values) == 1:
        return values * num_blocks
    if len(values) != num_blocks:
        raise ValueError(
            f"{option} needs one value per block ({num_blocks}) or a single value, got {len(values)}"
        )
    return values


def _uniform_pair(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--uniform must be BITS:RANK (e.g. 4:16), got {text!r}")
    return int(parts[0]), int(parts[1])


def plan(
    model: str | None = None,
    *,
    uniform: str | None = None,
    bits: str | None = None,
    ranks: str | None = None,
    output: str | None = None,
    force: bool = False,
    group_size: int = 64,
    quant_method: str = "hqq",
    alpha: float = 16.0,
    embed_bits: int | None = None,
    head_bits: int | None = None,
    name: str | None = None,
) -> int:
    """Write a plan (bits and LoRA rank per block) for a model, as JSON.

    Either --uniform BITS:RANK for every block, or --bits and --ranks per block (a single
    value is used for every block). The plan is validated against the model and stamped
    with its signature, so using it on another model is refused.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        uniform: BITS:RANK for every block, e.g. 4:16 (QLoRA)
        bits: bits per block, comma-separated (1..8, or 16 = unquantised), e.g. 4,4,2
        ranks: LoRA rank per block, comma-separated (0 = no adapter), e.g. 16,8,0
        output: write the plan to this file (default: print it)
        force: overwrite --output if it exists
        group_size: input columns per quantisation group (one 16-bit scale and zero each)
        quant_method: how codes are fitted: rtn (min-max) or hqq (half-quadratic)
        alpha: LoRA alpha; an adapter of rank r is scaled by alpha / r
        embed_bits: bits of the input embedding (default 16 = unquantised); on a tied model
            also the head's unless --head-bits is given
        head_bits: bits of the output head (default 16 = unquantised)
        name: a label for reports (default e.g. uniform-4bit-r16)
    """
    from qradaptor.plan import UNQUANTIZED, Plan, check_bits, check_rank

    if uniform is not None and (bits is not None or ranks is not None):
        raise ValueError("give either --uniform BITS:RANK or --bits/--ranks, not both")
    if uniform is None and (bits is None or ranks is None):
        raise ValueError("a plan needs --uniform BITS:RANK, or both --bits and --ranks")
    # Parse the numbers before loading the model, so a typo fails at once.
    if uniform is not None:
        pair = _uniform_pair(uniform)
        bits_list, ranks_list = [pair[0]], [pair[1]]
    else:
        assert bits is not None and ranks is not None
        bits_list, ranks_list = parse_int_list(bits, "--bits"), parse_int_list(ranks, "--ranks")
    for b in bits_list:
        check_bits(b, "--bits" if uniform is None else "BITS of --uniform")
    for r in ranks_list:
        check_rank(r, "--ranks" if uniform is None else "RANK of --uniform")
    if output is not None:
        check_output(output, force=force)
    _, structure = load_structure(model)
    kwargs = _options(structure, group_size, quant_method, alpha, embed_bits, head_bits)
    if name is not None:
        kwargs["name"] = name
    if uniform is not None:
        made = Plan.uniform(structure.num_blocks, bits_list[0], ranks_list[0], **kwargs)
    else:
        per_bits = _per_block(bits_list, "--bits", structure.num_blocks)
        per_ranks = _per_block(ranks_list, "--ranks", structure.num_blocks)
        made = Plan.from_lists(per_bits, per_ranks, **kwargs)
    made = made.for_model(structure)
    text = made.to_json() + "\n"
    if output is None:
        print(text, end="")
        return 0
    path = write_text_atomic(output, text, force=force)
    quantised = sorted({s.bits for s in made.layers.values() if s.bits != UNQUANTIZED})
    print(
        f"wrote plan {made.name or '(unnamed)'} for {structure.describe()} to {path} "
        f"(bits {', '.join(map(str, quantised)) or 'none quantised'}; "
        f"avg rank {sum(made.block_ranks()) / made.num_blocks:g})"
    )
    return 0


def _options(
    structure: ModelStructure,
    group_size: int,
    quant_method: str,
    alpha: float,
    embed_bits: int | None,
    head_bits: int | None,
) -> dict[str, object]:
    """Plan keyword arguments; a tied head follows --embed-bits unless --head-bits is given."""
    from qradaptor.plan import UNQUANTIZED

    if head_bits is None:
        head_bits = embed_bits if structure.tied and embed_bits is not None else UNQUANTIZED
    return {
        "group_size": group_size,
        "quant_method": quant_method,
        "alpha": alpha,
        "embed_bits": UNQUANTIZED if embed_bits is None else embed_bits,
        "head_bits": head_bits,
    }


VERB = plan


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra plan``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("--uniform", metavar="BITS:RANK", help=helps["uniform"])
    parser.add_argument("--bits", metavar="B[,B...]", help=helps["bits"])
    parser.add_argument("--ranks", metavar="R[,R...]", help=helps["ranks"])
    parser.add_argument("-o", "--output", metavar="FILE", help=helps["output"])
    parser.add_argument("--force", action="store_true", help=helps["force"])
    parser.add_argument("--group-size", type=int, default=64, help=helps["group_size"])
    parser.add_argument("--quant-method", choices=QUANT_METHODS, default="hqq", help=helps["quant_method"])
    parser.add_argument("--alpha", type=float, default=16.0, help=helps["alpha"])
    parser.add_argument("--embed-bits", type=int, help=helps["embed_bits"])
    parser.add_argument("--head-bits", type=int, help=helps["head_bits"])
    parser.add_argument("--name", help=helps["name"])
