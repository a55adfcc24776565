"""llama.cpp's own quantiser, through the ctypes API of ``llama-cpp-python`` (optional).

Two entry points, both what ``llama-quantize`` runs:
    ggml_quantize_rows    ggml's ``ggml_quantize_chunk`` on an array: the per-tensor call
                          ``llama_model_quantize`` makes (no importance matrix: for Q2_K..Q6_K
                          that is ``quantize_row_q*_K_ref``)
    quantize_gguf         ``llama_model_quantize`` on a file, every tensor at one type but those
                          named by regular expressions (its ``tt_overrides``, ``--tensor-type``)

They exist to check our quantisers (``kquants``) against ggml's and to measure both; nothing in
``qra export`` needs them. ``llama-cpp-python`` is not a dependency of qradaptor: each function
raises ``ImportError`` without it, and its tests skip.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as err:  # a clear message: the bare one names only the module
        raise ImportError(
            "llama.cpp's quantiser needs llama-cpp-python (pip install llama-cpp-python; "
            "docs/EXPORT.md says how to build it)"
        ) from err
    return llama_cpp


def _ggml_base() -> Any:
    """ggml's library as llama-cpp-python ships it; else libllama's handle, through which the
    dynamic linker also finds ggml's symbols."""
    llama_cpp = _llama_cpp()
    base = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    return ctypes.CDLL(str(base)) if base.is_file() else llama_cpp.llama_cpp._lib


def ggml_type_id(type_name: str) -> int:
    """ggml's enum value of ``type_name`` (``"Q3_K"`` -> 11), as ``gguf`` numbers them too."""
    from gguf import GGMLQuantizationType

    return int(GGMLQuantizationType[type_name])


def ggml_quantize_rows(x: np.ndarray, type_name: str) -> np.ndarray:
    """``x`` quantised by ggml's ``ggml_quantize_chunk`` without an importance matrix.

    Args:
        x: (rows, cols) float weights, cols a multiple of the type's block.
        type_name: a GGUF type ggml quantises without an importance matrix (Q4_1, Q8_0, Q2_K..).

    Returns:
        (rows, cols / block * block bytes) uint8, the bytes llama.cpp would write.

    Raises:
        ImportError: without llama-cpp-python.
        ValueError: for rows that are not whole blocks of ``type_name``.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    lib = _ggml_base()
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % block:
        raise ValueError(f"{type_name} needs rows of a multiple of {block} inputs, got shape {x.shape}")
    out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
    chunk = lib.ggml_quantize_chunk
    chunk.argtypes = (
        [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    )
    chunk.restype = ctypes.c_size_t
    written = chunk(ggml_type_id(type_name), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def quantize_gguf(
    source: str | Path,
    target: str | Path,
    *,
    default: str,
    overrides: Mapping[str, str] | None = None,
    embedding: str | None = None,
    threads: int = 1,
) -> None:
    """``llama_model_quantize`` of ``source`` into ``target``, without an importance matrix.

    Every weight llama.cpp quantises takes ``default`` (``pure``: none of its per-ftype mixtures),
    except the tensors whose name matches a regular expression of ``overrides`` (the first that
    matches), and the token embedding, which takes ``embedding`` when given. K-quant rows that
    are not a multiple of 256 fall back as llama.cpp decides. Quantised source tensors are
    re-quantised from their dequantised values (``allow_requantize``); one already of its target
    type is copied unchanged.

    Args:
        source: a GGUF llama.cpp loads.
        target: the file to write.
        default: the GGUF type of every other quantisable weight (e.g. "Q8_0", "F32").
        overrides: regular expression -> GGUF type, e.g. ``{"ffn_down": "Q3_K"}``.
        embedding: the token embedding's type; None: ``default``.
        threads: llama.cpp's quantisation threads.

    Raises:
        ImportError: without llama-cpp-python.
        ValueError: for a ``default`` with no llama.cpp file type.
        RuntimeError: if llama.cpp reports a failure.
    """
    llama_cpp = _llama_cpp()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{'ALL' if default == 'F32' else 'MOSTLY'}_{default}", None)
    if ftype is None:
        raise ValueError(
            f"default must be a type llama.cpp has a file type for (Q8_0, F32, ...), got {default!r}"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.pure = True
    params.allow_requantize = True
    if embedding is not None:
        params.token_embedding_type = ggml_type_id(embedding)
    items = list((overrides or {}).items())
    # A C array of {pattern, type} ended by a null pattern; kept alive until the call returns.
    table = (llama_cpp.llama_model_tensor_override * (len(items) + 1))()
    patterns = [pattern.encode() for pattern, _ in items]
    for slot, (pattern, (_, type_name)) in enumerate(zip(patterns, items, strict=True)):
        table[slot].pattern, table[slot].type = pattern, ggml_type_id(type_name)
    if items:
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({str(source)!r} -> {str(target)!r}) failed with {status}")
