"""Which plans vLLM can serve from a compressed-tensors folder, checked before anything loads.

vLLM runs compressed-tensors' integer weight-only schemes (``CompressedTensorsWNA16``) at 4
and 8 bits; a 16-bit linear is left out of every scheme (``ignore``) and served dense. vLLM
also fuses a block's q/k/v projections into one ``qkv_proj`` and gate/up into one
``gate_up_proj``, one kernel each, so the linears of a fused group must share one scheme:
the same bits and the same group size. The embedding and the head go through vLLM's
embedding layers, which compressed-tensors does not quantise, so they stay at 16 bits.

Pure: a plan and a model structure in, a ValueError naming the module and the rule out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qradaptor.plan import UNQUANTIZED

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan

SERVE_BITS: tuple[int, ...] = (4, 8, UNQUANTIZED)
"""Bits vLLM serves a compressed-tensors linear at (16: unquantised, left dense)."""
FUSED: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Linears (by their last name) that vLLM fuses into one layer of one block."""


def vllm_bits(bits: tuple[int, ...] | None, option: str = "--bits") -> tuple[int, ...]:
    """The bit choices a ``--serve vllm`` search or knapsack may use: ``SERVE_BITS`` when
    none are given, else ``bits`` if all are servable.

    Raises:
        ValueError: naming the first bit-width vLLM cannot serve.
    """
    if bits is None:
        return SERVE_BITS
    bad = [b for b in bits if b not in SERVE_BITS]
    if bad:
        raise ValueError(
            f"{option} {','.join(map(str, bits))} with --serve vllm: vLLM serves compressed-tensors "
            f"linears at {' or '.join(map(str, SERVE_BITS[:-1]))} bits, or 16 (unquantised), not {bad[0]}"
        )
    return tuple(bits)


def fused_groups(structure: ModelStructure) -> list[tuple[str, ...]]:
    """The names (relative to a block) of each fused group this structure has, e.g.
    ``("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")``."""
    groups = []
    for members in FUSED:
        names = tuple(n for m in members for n in structure.linear_names if n.rsplit(".", 1)[-1] == m)
        if len(names) > 1:
            groups.append(names)
    return groups


def check_vllm_plan(plan: Plan, structure: ModelStructure) -> None:
    """Raises ValueError unless vLLM can serve ``plan`` on ``structure`` from compressed-tensors.

    Raises:
        ValueError: for a GPT-2 style Conv1D linear (compressed-tensors quantises nn.Linear),
            a quantised embedding or head, a linear at bits outside ``SERVE_BITS``, or a fused
            group (q/k/v, gate/up) whose linears differ in bits or group size; the message names
            the module and its bits.
    """
    conv1d = [info.name for info in structure.linears if info.kind != "linear"]
    if conv1d:
        raise ValueError(
            f"compressed-tensors quantises nn.Linear layers; {structure.model_type}'s {conv1d[0]} is a "
            "GPT-2 Conv1D, which it cannot serve"
        )
    for what, bits in (("embed_bits", plan.embed_bits), ("head_bits", plan.head_bits)):
        if bits != UNQUANTIZED:
            raise ValueError(
                f"plan {plan.name or '(unnamed)'} has {what} {bits}: vLLM does not quantise the embedding or "
                "head through compressed-tensors; give the plan 16-bit embedding and head"
            )
    for block, name, spec in plan.iter_modules(structure):
        if spec.bits not in SERVE_BITS:
            where = structure.module_path(block, name)
            raise ValueError(
                f"plan {plan.name or '(unnamed)'} gives {where} {spec.bits} bits: "
                f"vLLM serves compressed-tensors linears at 4 or 8 bits or 16 (unquantised); make the plan "
                "with --serve vllm"
            )
    for block in range(structure.num_blocks):
        for group in fused_groups(structure):
            specs = [plan.spec_for(block, name) for name in group]
            quant = [(s.bits, plan.group_size_of(s) if s.bits != UNQUANTIZED else None) for s in specs]
            if len(set(quant)) > 1:
                (first, a), (other, b) = next(
                    ((group[0], quant[0]), (n, q)) for n, q in zip(group, quant, strict=True) if q != quant[0]
                )
                same_bits = a[0] == b[0]  # then the group sizes differ: name them
                raise ValueError(
                    f"plan {plan.name or '(unnamed)'} gives {structure.module_path(block, first)} "
                    f"{_describe(a, same_bits)} but {structure.module_path(block, other)} "
                    f"{_describe(b, same_bits)}: vLLM fuses "
                    f"{'/'.join(n.rsplit('.', 1)[-1] for n in group)} into one layer, so they must share "
                    "bits and group size"
                )


def _describe(quant: tuple[int, int | None], with_group_size: bool) -> str:
    bits, group_size = quant
    return f"{bits} bits (group size {group_size})" if with_group_size else f"{bits} bits"
