"""Which GGUF type a plan's bits become, and our packed codes written as GGUF blocks.

Notation (one GGUF block of 32 consecutive inputs of one row):
    ours   W_hat = (q - z) * s         q in [0, 2**bits - 1]; s, z float16 per group of g inputs
    Q4_1   W     = d * q + m           q in [0, 15]; d, m float16 per block of 32
    Q5_1   W     = d * q + m           q in [0, 31]; the same with a fifth bit plane
    Q8_0   W     = d * q               q in [-128, 127]; d float16 per block of 32 (symmetric)
    Q4_0   W     = d * (q - 8)         q in [0, 15]; d float16 per block of 32 (symmetric)
    Q5_0   W     = d * (q - 16)        q in [0, 31]; the same with a fifth bit plane
The K-quants (Q2_K..Q6_K, 256-input super-blocks with quantised sub-block scales) are in
``kquants``.

When g is a multiple of 32 every GGUF block lies inside one of our groups, so codes of at most
4 (5) bits are Q4_1 (Q5_1) codes unchanged, with d = s (a float16 already) and m = -z * s. The
product z * s of two float16 values is exact in float32; m is that product rounded once to
float16, the only change (a relative error near 2**-12 of the block's minimum). Every other
type is re-quantised: K-quants' sub-block scales are themselves quantised under a super-block
scale, and Q8_0 is symmetric while our codes have a real zero point; so is every weight an
adapter was merged into (it is off the grid).

A symmetric fit (quant_method "symmetric": W_hat = (q - 2**(bits - 1)) * d, no zero) goes to
the symmetric types instead (``SYMMETRIC``): its b-bit codes are Q4_0 (b <= 4), Q5_0 (b = 5) or
Q8_0 (b <= 8) codes shifted by the difference of the midpoints, q + 2**(B - 1) - 2**(b - 1) for
a B-bit type, with d = s: nothing is rounded, the file dequantises to our values bit for bit.
At b = 4, 5 and 8 and group 32 those blocks are the ones llama.cpp's own quantiser makes from
the same weight (``quant/symmetric.py`` is its rounding). Its mapping: 2 -> Q2_K, 3 and 4 ->
Q4_0, 5 -> Q5_0, 6 -> Q6_K, 7 and 8 -> Q8_0; the choices and K-quant fallbacks the same with
Q4_0/Q5_0 for Q4_1/Q5_1 (Q4_0 is the type llama.cpp repacks for its fast CPU kernels).

Mapping of the asymmetric fits (``GGUF_TYPES``, the type that keeps the plan's bits in the file
where that costs little): 2 -> Q2_K (2.625 bits per weight), 3 -> Q4_1 (our codes unchanged, 5
bits: re-quantising a 3-bit grid with a zero point to Q3_K's symmetric levels cost +78%
perplexity on SmolLM2 against +0.6% for the exact codes, docs/EXPORT.md; ``--gguf-types 3=Q3_K``
for 3.4375 bits), 4 -> Q4_1 and 5 -> Q5_1 (5 and 6 bits: our codes and float16 scale and offset
per group of 32, exactly the plan's bytes at group 32), 6 -> Q6_K (6.5625), 7, 8 -> Q8_0 (8.5);
16 -> the source tensor's own bytes when the run left the weight unchanged, else F16.
``TYPE_CHOICES`` lists what ``--gguf-types`` may pick instead (4 -> Q4_K, 5 -> Q5_K, 2 -> Q4_1
to keep the codes exact, 3 -> Q3_K, 6 -> Q8_0); any width may also pick a wider type
(``TypeFamily.wider``: Q5_1 or Q5_0, Q5_K, Q6_K, Q8_0, F16), for a weight an adapter was merged
into: it is off the plan's grid and is re-quantised anyway, and a fresh rounding at the plan's
own bits undoes much of what a low-bit adapter learned (docs/EXPORT.md). K-quants need rows of
a multiple of 256 inputs: other rows fall back (``FALLBACK``) to the 32-block type nearest in
bits that holds the plan's codes exactly (Q4_1, Q5_1), or to Q8_0 for 6 bits, and the tensor's
record says so (llama.cpp's ``llama-quantize`` falls back the same way). 1 bit has no GGUF type:
llama.cpp's ~1-bit formats (IQ1_S, IQ1_M, TQ1_0) are codebooks and ternary grids, not 1-bit
codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qradaptor.plan import UNQUANTIZED

if TYPE_CHECKING:
    import numpy as np
    import torch

    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan
    from qradaptor.quant.quantizer import QuantizedTensor

BLOCK = 32
"""Weights per block of the 32-block types (Q4_1, Q5_1, Q8_0); the K-quants' is ``kquants.SUPER``."""
GGUF_TYPES: dict[int, str] = {2: "Q2_K", 3: "Q4_1", 4: "Q4_1", 5: "Q5_1", 6: "Q6_K", 7: "Q8_0", 8: "Q8_0"}
"""The GGUF type of a quantised tensor at each plan bit-width (16: see ``DENSE_TYPE``)."""
TYPE_CHOICES: dict[int, tuple[str, ...]] = {
    2: ("Q2_K", "Q4_1"),
    3: ("Q4_1", "Q3_K"),
    4: ("Q4_1", "Q4_K"),
    5: ("Q5_1", "Q5_K"),
    6: ("Q6_K", "Q8_0"),
    7: ("Q8_0",),
    8: ("Q8_0",),
}
"""The types a weight of each bit-width may be written as: enough bits for its codes, the
default first."""
FALLBACK: dict[str, str] = {"Q2_K": "Q4_1", "Q3_K": "Q4_1", "Q4_K": "Q4_1", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
"""The 32-block type a K-quant falls back to for rows that are not a multiple of 256 inputs."""
CODE_BITS: dict[str, int] = {"Q4_1": 4, "Q5_1": 5}
"""Types that hold our codes unchanged, with their code bits."""
DENSE_TYPE = "F16"
"""The type of a 16-bit weight that the run changed (an adapter merged into it)."""
BITS_PER_WEIGHT: dict[str, float] = {
    "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_0": 4.5, "Q4_K": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_K": 5.5,
    "Q5_1": 6.0, "Q6_K": 6.5625, "Q8_0": 8.5, DENSE_TYPE: 16.0,
}  # fmt: skip
"""Stored bits per weight of each type a planned tensor can be written as (scales included)."""


@dataclass(frozen=True)
class TypeFamily:
    """The GGUF types of one kind of fit: asymmetric (a zero per group) or symmetric (none)."""

    types: dict[int, str]
    """The type of a weight at each plan bit-width, by default."""
    choices: dict[int, tuple[str, ...]]
    """The types ``--gguf-types`` may pick per bit-width, the default first."""
    fallback: dict[str, str]
    """The 32-block type a K-quant falls back to for rows not a multiple of 256 inputs."""
    code_bits: dict[str, int]
    """Types that hold this fit's codes unchanged, with their code bits."""
    wider: tuple[str, ...]
    """Types any width may pick when they store more bits per weight than its default: for a
    weight an adapter was merged into (module docstring)."""

    def allowed(self, bits: int) -> tuple[str, ...]:
        """The types ``--gguf-types`` accepts for ``bits``: ``choices`` then the wider ones."""
        floor = BITS_PER_WEIGHT[self.types[bits]]
        wider = (t for t in self.wider if BITS_PER_WEIGHT[t] > floor and t not in self.choices[bits])
        return self.choices[bits] + tuple(wider)


ASYMMETRIC = TypeFamily(
    GGUF_TYPES, TYPE_CHOICES, FALLBACK, CODE_BITS, wider=("Q5_1", "Q5_K", "Q6_K", "Q8_0", DENSE_TYPE)
)
"""rtn and hqq: Q4_1 and Q5_1 hold the codes."""
SYMMETRIC = TypeFamily(
    types={2: "Q2_K", 3: "Q4_0", 4: "Q4_0", 5: "Q5_0", 6: "Q6_K", 7: "Q8_0", 8: "Q8_0"},
    choices={
        2: ("Q2_K", "Q4_0"),
        3: ("Q4_0", "Q3_K"),
        4: ("Q4_0", "Q4_K"),
        5: ("Q5_0", "Q5_K"),
        6: ("Q6_K", "Q8_0"),
        7: ("Q8_0",),
        8: ("Q8_0",),
    },
    fallback={"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q4_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0"},
    code_bits={"Q4_0": 4, "Q5_0": 5, "Q8_0": 8},
    wider=("Q5_0", "Q5_K", "Q6_K", "Q8_0", DENSE_TYPE),
)
"""quant_method "symmetric": Q4_0, Q5_0 and Q8_0 hold the codes."""


def type_family(method: str) -> TypeFamily:
    """The GGUF types of a plan's ``quant_method``."""
    from qradaptor.plan import SYMMETRIC_METHOD

    return SYMMETRIC if method == SYMMETRIC_METHOD else ASYMMETRIC


def gguf_type(bits: int, *, where: str = "a layer", types: Mapping[int, str] | None = None) -> str:
    """The GGUF type of a weight quantised at ``bits``: ``types`` (from :func:`type_map`), else
    ``GGUF_TYPES``.

    Raises:
        ValueError: for bits with no GGUF type (1), naming ``where``.
    """
    if bits not in GGUF_TYPES:
        raise ValueError(
            f"{where} has {bits} bits, which have no GGUF type: llama.cpp's ~1-bit formats (IQ1_S, "
            f"IQ1_M, TQ1_0) are codebooks, not 1-bit codes; GGUF export takes bits "
            f"{sorted(GGUF_TYPES)} or 16"
        )
    return (types or GGUF_TYPES)[bits]


def type_map(overrides: Mapping[int, str], method: str = "hqq") -> dict[int, str]:
    """The default types of ``method``'s family with ``overrides`` (bits -> type) applied, each
    checked against the family's choices and wider types (``TypeFamily.allowed``).

    Raises:
        ValueError: for bits with no GGUF type, or a type that is not among that width's choices.
    """
    family = type_family(method)
    types = dict(family.types)
    for bits, name in overrides.items():
        if bits not in family.choices:
            raise ValueError(
                f"--gguf-types: {bits} bits have no GGUF type; it takes bits {sorted(family.choices)}"
            )
        if name not in family.allowed(bits):
            wider = family.allowed(bits)[len(family.choices[bits]) :]
            more = f", or a wider type for a merged adapter: {', '.join(wider)}" if wider else ""
            raise ValueError(
                f"--gguf-types: {bits}-bit weights can be written as "
                f"{' or '.join(family.choices[bits])}{more}; got {name!r} (the choices of a {method} plan)"
            )
        types[bits] = name
    return types


def row_type(type_name: str, cols: int, method: str = "hqq") -> tuple[str, str]:
    """(the type written, why it differs from ``type_name`` or "") for rows of ``cols`` inputs.

    A K-quant needs rows of a multiple of 256 inputs; other rows take ``method``'s family's
    fallback (``FALLBACK`` for rtn and hqq).
    """
    from qradaptor.export.kquants import K_TYPES, SUPER

    if type_name in K_TYPES and cols % SUPER:
        fallback = type_family(method).fallback[type_name]
        return (
            fallback,
            f"{type_name} needs rows of a multiple of {SUPER} inputs, these have {cols}: {fallback}",
        )
    return type_name, ""


def check_gguf_plan(plan: Plan, structure: ModelStructure) -> None:
    """Raises ValueError unless every tensor ``plan`` quantises has a GGUF type and whole blocks.

    Checked before any weight is loaded: bits with no GGUF type (the first few layers named),
    and quantised weights whose rows are not a multiple of ``BLOCK`` inputs.
    """
    plan.validate(structure)
    tensors = [
        (structure.module_path(block, name), spec.bits, info.in_features)
        for block, name, spec in plan.iter_modules(structure)
        for info in structure.linears
        if info.name == name
    ]
    tensors.append((structure.embed_path, plan.embed_bits, structure.embed_shape[1]))
    if structure.head_path is not None and structure.head_shape is not None and not structure.tied:
        tensors.append((structure.head_path, plan.head_bits, structure.head_shape[1]))
    quantised = [(path, bits, cols) for path, bits, cols in tensors if bits != UNQUANTIZED]
    no_type = [path for path, bits, _ in quantised if bits not in GGUF_TYPES]
    if no_type:
        bits = next(b for p, b, _ in quantised if p == no_type[0])
        more = f" and {len(no_type) - 1} more" if len(no_type) > 1 else ""
        gguf_type(bits, where=f"{no_type[0]}{more}")
    ragged = [(path, cols) for path, _, cols in quantised if cols % BLOCK]
    if ragged:
        raise ValueError(
            f"GGUF block types need rows of a multiple of {BLOCK} inputs; {ragged[0][0]} has rows of "
            f"{ragged[0][1]}; give such layers 16 bits"
        )


def holds_codes(type_name: str, bits: int, group_size: int, symmetric: bool = False) -> bool:
    """Whether ``type_name`` holds codes of ``bits`` bits at ``group_size`` unchanged; of a
    symmetric fit (no zero) if ``symmetric``."""
    code_bits = (SYMMETRIC if symmetric else ASYMMETRIC).code_bits
    return type_name in code_bits and bits <= code_bits[type_name] and group_size % BLOCK == 0


def codes_to_blocks(qt: QuantizedTensor, type_name: str) -> np.ndarray:
    """Our codes as GGUF blocks, the codes unchanged (module docstring): an asymmetric fit's as
    Q4_1 or Q5_1, a symmetric one's as Q4_0, Q5_0 or Q8_0.

    Args:
        qt: a quantised (rows, cols) weight, possibly double-quantised.
        type_name: "Q4_1" or "Q5_1"; for a symmetric ``qt`` "Q4_0", "Q5_0" or "Q8_0".

    Returns:
        (rows, cols // 32 * block bytes) uint8, as ``gguf.quants.quantize`` returns blocks.

    Raises:
        ValueError: if ``type_name`` cannot hold the codes (more bits, or groups not made of
            whole blocks).
    """
    import numpy as np

    from qradaptor.quant.bitpack import unpack

    if not holds_codes(type_name, qt.bits, qt.group_size, qt.symmetric):
        code_bits = (SYMMETRIC if qt.symmetric else ASYMMETRIC).code_bits
        kind = "symmetric" if qt.symmetric else "asymmetric"
        raise ValueError(
            f"{type_name} cannot hold {qt.bits}-bit codes at group size {qt.group_size} unchanged "
            f"(for a {kind} fit it needs at most {code_bits.get(type_name, 0)} bits and groups of a "
            f"multiple of {BLOCK})"
        )
    if qt.symmetric:
        return _symmetric_blocks(qt, type_name)
    rows, cols = qt.shape
    scale, zero = qt.metadata()  # (rows, groups) float16
    per = qt.group_size // BLOCK
    s = scale.float().repeat_interleave(per, dim=1).reshape(-1, 1)  # (blocks, 1)
    z = zero.float().repeat_interleave(per, dim=1).reshape(-1, 1)
    d = s.numpy().astype(np.float16)  # exact: s is a float16 value
    m = (-z * s).numpy().astype(np.float16)  # z * s is exact in float32; rounded once here
    q = unpack(qt.packed, qt.bits, cols).reshape(-1, BLOCK).numpy()  # (blocks, 32) uint8
    # Byte j holds element j in its low nibble and element j + 16 in its high one.
    qs = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)
    parts = [d.view(np.uint8), m.view(np.uint8)]
    if type_name == "Q5_1":  # bit j of a little-endian u32: the fifth bit of element j
        parts.append(np.packbits((q >> 4) & 1, axis=-1, bitorder="little"))
    parts.append(qs.astype(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def _symmetric_blocks(qt: QuantizedTensor, type_name: str) -> np.ndarray:
    """A symmetric fit's codes as Q4_0, Q5_0 or Q8_0 blocks: d = s, codes moved to the type's
    midpoint (exact integers), laid out as ``gguf.quants`` lays them out."""
    import numpy as np

    from qradaptor.quant.bitpack import unpack
    from qradaptor.quant.symmetric import code_midpoint

    rows, cols = qt.shape
    type_bits = SYMMETRIC.code_bits[type_name]
    per = qt.group_size // BLOCK
    d = qt.scale.float().repeat_interleave(per, dim=1).reshape(-1, 1).numpy().astype(np.float16)  # exact
    q = unpack(qt.packed, qt.bits, cols).reshape(-1, BLOCK).numpy().astype(np.int16)  # (blocks, 32)
    q += code_midpoint(type_bits) - code_midpoint(qt.bits)  # our midpoint onto the type's
    if type_name == "Q8_0":  # signed int8 codes, q - 128
        parts = [d.view(np.uint8), (q - 128).astype(np.int8).view(np.uint8)]
    else:
        q8 = q.astype(np.uint8)
        # Byte j holds element j in its low nibble and element j + 16 in its high one.
        qs = (q8[:, :16] & 0x0F) | ((q8[:, 16:] & 0x0F) << 4)
        parts = [d.view(np.uint8)]
        if type_name == "Q5_0":  # bit j of a little-endian u32: the fifth bit of element j
            parts.append(np.packbits((q8 >> 4) & 1, axis=-1, bitorder="little"))
        parts.append(qs.astype(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def quantize_dense(weight: torch.Tensor, type_name: str) -> np.ndarray:
    """A float weight as GGUF ``type_name``: K-quants by ``kquants``, the rest by ``gguf.quants``
    (Q4_1, Q5_1, Q8_0, F16, F32)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from qradaptor.export.kquants import K_TYPES, quantize_rows

    values = weight.detach().float().cpu().numpy().astype(np.float32)
    if type_name in K_TYPES:
        return quantize_rows(values, type_name)
    return quantize(values, GGMLQuantizationType[type_name])


def dequantize_blocks(data: np.ndarray, type_name: str, shape: tuple[int, int]) -> torch.Tensor:
    """GGUF data of ``type_name`` back to a float32 (rows, cols) tensor, by ``gguf.quants``."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    values = dequantize(np.ascontiguousarray(data), GGMLQuantizationType[type_name])
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def llama_rows(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection in llama.cpp's order (``convert_hf_to_gguf``'s ``permute``).

    llama.cpp's rotary embedding pairs neighbouring dimensions of a head, Hugging Face's pairs
    the two halves, so each head's rows (2, half) are interleaved as (half, 2). Rows move as a
    whole: packed codes, scales and dense weights are permuted alike.

    Args:
        x: (rows, ...) with rows = heads * head_dim.
        heads: attention heads of the projection (key-value heads for k).
    """
    rows = x.shape[0]
    return x.reshape(heads, 2, rows // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def llama_rows_codes(qt: QuantizedTensor, heads: int) -> QuantizedTensor:
    """``qt`` with its rows in llama.cpp's q/k order (see :func:`llama_rows`).

    Double-quantised metadata is dequantised first: its blocks run over the flat (rows,
    groups) order, which the permutation would break.
    """
    from qradaptor.quant.quantizer import QuantizedTensor

    if qt.symmetric:  # no zero: it stays symmetric
        packed, scale = (llama_rows(t, heads).contiguous() for t in (qt.packed, qt.scale))
        return QuantizedTensor(packed, scale, None, qt.shape, qt.bits, qt.group_size)
    scale, zero = qt.metadata()
    parts = (llama_rows(t, heads).contiguous() for t in (qt.packed, scale, zero))
    return QuantizedTensor(*parts, qt.shape, qt.bits, qt.group_size)
