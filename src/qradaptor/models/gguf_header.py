"""Read a GGUF file's tensor list from its header, and one tensor's values, without the metadata.

``gguf.GGUFReader`` parses every metadata value into numpy views, which takes seconds on a
real model (the tokenizer's ~100k strings); the tensor list, which is all provenance needs,
sits after them. This walks the header once with ``struct``, stepping over the metadata
values, and reads tensor data only when asked (a memory map, dequantised by ``gguf.quants``).

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, version u32, tensor count u64, metadata
count u64; each metadata entry is a key string, a value type u32 and the value; then per
tensor: name string, n_dims u32, dims u64 x n_dims (innermost first), type u32, offset u64
(from the data section, which starts at the next multiple of ``general.alignment``, default 32).
A string is a u64 length and that many UTF-8 bytes.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Byte sizes of the fixed-size metadata value types, by GGUF value-type id.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_FLOAT_TYPES = {"F32": 24, "F16": 11, "BF16": 8, "F64": 53}
"""Unquantised GGML types and the bits of their significand (their relative precision)."""


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as the GGUF header describes it."""

    name: str
    """The GGUF name, e.g. ``"token_embd.weight"`` or ``"blk.0.attn_q.weight"``."""
    type_name: str
    """The GGML type's name, e.g. ``"Q4_1"``, ``"Q6_K"``, ``"F32"`` (``"type<N>"`` if unknown)."""
    shape: tuple[int, ...]
    """Dimensions outermost first (numpy order), e.g. ``(vocab, hidden)`` for the embedding."""
    offset: int
    """Byte offset of its data from the file's start."""

    @property
    def quantised(self) -> bool:
        """Whether the type is a block quantisation rather than a plain float."""
        return self.type_name not in _FLOAT_TYPES

    @property
    def elements(self) -> int:
        """Number of values."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """What provenance needs from a GGUF header."""

    architecture: str | None
    """``general.architecture`` (e.g. ``"llama"``); None if absent."""
    tensors: tuple[GGUFTensor, ...]
    """Every tensor, in file order."""

    def tensor(self, name: str) -> GGUFTensor | None:
        """The tensor called ``name``, or None."""
        return next((t for t in self.tensors if t.name == name), None)


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def u32(self) -> int:
        return self.take("<I")[0]

    def u64(self) -> int:
        return self.take("<Q")[0]

    def string(self) -> str:
        n = self.u64()
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def skip_value(self, kind: int) -> None:
        if kind in _SCALAR_SIZES:
            self.pos += _SCALAR_SIZES[kind]
        elif kind == _STRING:
            n = self.u64()  # (not `pos += u64()`: that adds to the position before the read)
            self.pos += n
        elif kind == _ARRAY:
            inner, count = self.u32(), self.u64()
            if inner in _SCALAR_SIZES:
                self.pos += _SCALAR_SIZES[inner] * count
            else:  # arrays of strings (the vocabulary) or of arrays
                for _ in range(count):
                    self.skip_value(inner)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")
        if self.pos > len(self.buf):
            raise ValueError("the header runs past the end of the file")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Walk a GGUF header: its architecture and tensor list, without parsing the metadata values.

    Args:
        path: A ``.gguf`` file.

    Returns:
        The architecture and every tensor's name, type, shape and data offset.

    Raises:
        ValueError: If the file is not a little-endian GGUF v2/v3 file, or its header is cut short.
    """
    from gguf import GGMLQuantizationType

    path = Path(path)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        try:
            magic, version = bytes(buf[:4]), struct.unpack_from("<I", buf, 4)[0]
            if magic != b"GGUF" or version not in (2, 3):
                raise ValueError(f"not a little-endian GGUF v2/v3 file (magic {magic!r}, version {version})")
            cur.pos = 8
            n_tensors, n_fields = cur.u64(), cur.u64()
            architecture, alignment = None, _DEFAULT_ALIGNMENT
            for _ in range(n_fields):
                key, kind = cur.string(), cur.u32()
                if key == "general.architecture" and kind == _STRING:
                    architecture = cur.string()
                elif key == "general.alignment" and kind == _UINT32:
                    alignment = cur.u32()
                else:
                    cur.skip_value(kind)
            raw = []
            for _ in range(n_tensors):
                name, n_dims = cur.string(), cur.u32()
                if n_dims > _MAX_DIMS:
                    raise ValueError(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
                dims = cur.take(f"<{n_dims}Q")
                kind, offset = cur.u32(), cur.u64()
                raw.append((name, dims, kind, offset))
        except struct.error as err:
            raise ValueError(f"GGUF header of {str(path)!r} is cut short ({err})") from err
        start = -(-cur.pos // alignment) * alignment
    known = {t.value: t.name for t in GGMLQuantizationType}
    tensors = tuple(
        GGUFTensor(name, known.get(kind, f"type{kind}"), tuple(reversed(dims)), start + offset)
        for name, dims, kind, offset in raw
    )
    return GGUFHeader(architecture, tensors)


def read_tensor(path: str | os.PathLike[str], tensor: GGUFTensor) -> np.ndarray:
    """One tensor's values, dequantised to float32 by ``gguf.quants``.

    Args:
        path: The GGUF file ``tensor`` came from.
        tensor: An entry of :func:`read_header`'s ``tensors``.

    Returns:
        A float32 array of ``tensor.shape``.

    Raises:
        ValueError: If ``gguf`` cannot dequantise the type or the data runs past the file.
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    try:
        qtype = GGMLQuantizationType[tensor.type_name]
    except KeyError as err:
        raise ValueError(f"unknown GGML type {tensor.type_name} of {tensor.name}") from err
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    row = tensor.shape[-1]
    nbytes = tensor.elements // block * block_bytes
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(nbytes,))
    rows = raw.reshape(-1, row // block * block_bytes)  # (rows, bytes per row)
    try:
        values = dequantize(np.asarray(rows), qtype)
    except NotImplementedError as err:
        raise ValueError(f"gguf cannot dequantise {tensor.type_name} ({tensor.name})") from err
    return values.astype(np.float32, copy=False).reshape(tensor.shape)


def precision_bits(type_name: str) -> float:
    """Relative precision of a GGML type in bits: a float's significand, a quant's bits per weight.

    Args:
        type_name: e.g. ``"F16"`` (11), ``"Q8_0"`` (8.5), ``"Q4_K"`` (4.5).

    Returns:
        The bits; 0.0 for a type ``gguf`` does not know.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if type_name in _FLOAT_TYPES:
        return float(_FLOAT_TYPES[type_name])
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    except KeyError:
        return 0.0
    return block_bytes * 8 / block
