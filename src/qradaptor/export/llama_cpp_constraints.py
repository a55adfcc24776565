"""Which plans llama.cpp serves byte for byte as planned, checked before anything loads.

A symmetric fit (quant_method "symmetric", ``quant/symmetric.py``) at group size 32 has 4-, 5-
and 8-bit codes that are llama.cpp's own Q4_0, Q5_0 and Q8_0 blocks: ``qra export --format
gguf`` writes them unchanged, at exactly the plan's bytes (bits + 16/32 a weight: 18, 22 and 34
bytes per 32 weights, ``memory.quantized_nbytes``). A 16-bit block linear of such a plan is
written as F16, the 2 bytes a weight the plan prices it at. Any other plan is re-quantised
somewhere on export: an asymmetric fit's 3-bit codes go to Q4_1 (no bytes saved) or Q3_K
(+78% perplexity, docs/EXPORT.md), a 6-bit one to Q6_K, another group size's scales are not
GGUF's 32-weight blocks.

Unlike vLLM (``vllm_constraints``), llama.cpp gives every tensor its own type and fuses none,
so no linears need to share bits: a ``--serve llama.cpp`` plan needs no ties.

The embedding and the head are not block tensors: they follow ``--embed-bits`` and
``--head-bits`` as every GGUF export does (``gguf_types``) and are not checked here.

Pure: options or a plan and a model structure in, a one-line ValueError naming the option or
the module and the rule out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qradaptor.plan import SYMMETRIC_METHOD, UNQUANTIZED

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan

LLAMA_CPP_BITS: tuple[int, ...] = (4, 5, 8, UNQUANTIZED)
"""Bits whose codes GGUF holds unchanged at group 32: Q4_0, Q5_0, Q8_0; 16 is F16."""
LLAMA_CPP_GROUP_SIZE = 32
"""Weights per block of Q4_0, Q5_0 and Q8_0: one float16 scale each."""
LLAMA_CPP_METHOD = SYMMETRIC_METHOD
"""The quantiser whose rounding is llama.cpp's (a scale and no zero per block)."""
RULE = (
    f"llama.cpp serves as planned only --quant-method {LLAMA_CPP_METHOD}, --group-size "
    f"{LLAMA_CPP_GROUP_SIZE}, --bits from {','.join(map(str, LLAMA_CPP_BITS))} (Q4_0, Q5_0, Q8_0, "
    "F16) and no --double-quant"
)
"""What every refusal of a ``--serve llama.cpp`` option says is accepted."""


def llama_cpp_choices(
    bits: tuple[int, ...] | None,
    group_size: int | None,
    quant_method: str | None,
    double_quant: bool = False,
    bits_option: str = "--bits",
) -> tuple[tuple[int, ...], int, str]:
    """The (bit choices, group size, quant method) of a ``--serve llama.cpp`` knapsack or
    search: each given one checked, each left None picked (``LLAMA_CPP_BITS``,
    ``LLAMA_CPP_GROUP_SIZE``, ``LLAMA_CPP_METHOD``).

    Args:
        bits: the bit choices given, or None.
        group_size: the group size given, or None.
        quant_method: the quantiser given, or None.
        double_quant: whether --double-quant was given (a symmetric fit has no zero to
            double-quantise, and GGUF's blocks keep float16 scales).
        bits_option: the option ``bits`` came from, for the message (``--fixed-bits``).

    Raises:
        ValueError: naming the option given, its value and ``RULE``.
    """
    if quant_method is not None and quant_method != LLAMA_CPP_METHOD:
        raise ValueError(f"--quant-method {quant_method} with --serve llama.cpp: {RULE}")
    if group_size is not None and group_size != LLAMA_CPP_GROUP_SIZE:
        raise ValueError(f"--group-size {group_size} with --serve llama.cpp: {RULE}")
    if double_quant:
        raise ValueError(f"--double-quant with --serve llama.cpp: {RULE}")
    if bits is not None:
        bad = [b for b in bits if b not in LLAMA_CPP_BITS]
        if bad:
            raise ValueError(
                f"{bits_option} {','.join(map(str, bits))} with --serve llama.cpp: {RULE}; "
                f"{bad[0]} bits would be re-quantised on export"
            )
    return (bits or LLAMA_CPP_BITS), LLAMA_CPP_GROUP_SIZE, LLAMA_CPP_METHOD


def llama_cpp_mismatch(plan: Plan, structure: ModelStructure) -> str:
    """Why some block linear of ``plan`` would not be written to GGUF unchanged at the plan's
    bytes, or "" when every one would (as long as no adapter is merged into it)."""
    label = plan.name or "(unnamed)"
    if plan.quant_method != LLAMA_CPP_METHOD:
        return f"plan {label} is quant method {plan.quant_method}, not {LLAMA_CPP_METHOD}"
    if plan.double_quant:
        return f"plan {label} double-quantises its scales; GGUF blocks keep float16 scales"
    for block, name, spec in plan.iter_modules(structure):
        where = structure.module_path(block, name)
        if spec.bits not in LLAMA_CPP_BITS:
            return f"plan {label} gives {where} {spec.bits} bits, which GGUF holds only re-quantised"
        if spec.bits != UNQUANTIZED and plan.group_size_of(spec) != LLAMA_CPP_GROUP_SIZE:
            return (
                f"plan {label} gives {where} group size {plan.group_size_of(spec)}; "
                f"GGUF blocks are {LLAMA_CPP_GROUP_SIZE} weights"
            )
    return ""


def check_llama_cpp_plan(plan: Plan, structure: ModelStructure) -> None:
    """Raises ValueError unless llama.cpp serves every block linear of ``plan`` as planned:
    its codes written unchanged as Q4_0, Q5_0 or Q8_0, or F16 at 16 bits, each tensor's bytes
    the plan's (``memory.plan_memory``).

    Raises:
        ValueError: naming the first module and the rule it breaks (``llama_cpp_mismatch``).
    """
    why = llama_cpp_mismatch(plan, structure)
    if why:
        raise ValueError(f"{why}: {RULE}; make the plan with --serve llama.cpp")
