"""The packed quantised base of a run: save it once, load it without re-fitting the codes.

A training run quantises its base once (HQQ fits take minutes on a real model) and trains
on exactly those codes. ``base.safetensors`` keeps them, so that evaluation and export see
the very base that was trained, bit for bit, and skip the fit.

File layout (safetensors), for every quantised module under its path in the unwrapped
model (``model.layers.3.self_attn.q_proj``; no PEFT ``base_model.model.`` or ``.base_layer``):
    PATH.qweight  uint8 (rows, bits * ceil(cols / 8))  packed codes, see ``quant.bitpack``
    PATH.scale    float16 (rows, cols // group_size), the module's own group size; uint8 codes
                  when the plan double-quantises (block linears only)
    PATH.zero     the same for the zeros; absent when the plan's quant_method is "symmetric"
                  (no zero point: every group's zero is the code midpoint)
    PATH.scale_meta, PATH.zero_meta  float16 (ceil(groups / META_BLOCK), 2), double-quantised only
    PATH.bias     the bias, if the module has one
A tied head that shares the embedding's codes is stored once, under the embedding.
Metadata (strings): format, format_version, plan_hash, plan (the Plan's JSON), bits (JSON
path -> bits), shared (JSON head path -> embedding path), model_signature (the structure's
fingerprint), model_fingerprint (whatever the caller names the weights by).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.plan import SYMMETRIC_METHOD, UNQUANTIZED, Plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.models.structure import ModelStructure

FORMAT = "qradaptor-packed-base"
FORMAT_VERSION = 1
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class PackedHeader:
    """The metadata of a packed base file, read without its tensors."""

    plan_hash: str
    """Hash of the plan the base was quantised with."""
    plan: Plan
    """That plan."""
    bits: dict[str, int]
    """Module path -> bits, for every stored module (and shared head)."""
    shared: dict[str, str]
    """Tied head path -> the embedding path whose codes it shares."""
    model_signature: str
    """``ModelStructure.signature`` of the model it was packed from."""
    model_fingerprint: str
    """The caller's fingerprint of the weights it was packed from ("" if none given)."""


Planned = tuple[int, tuple[int, int], bool, int, bool, bool]
"""(bits, (rows, cols), has bias, group size, double-quantised, symmetric) of one quantised module."""


def _planned(structure: ModelStructure, plan: Plan) -> dict[str, Planned]:
    """Path -> ``Planned`` of every module ``plan`` quantises, in order."""
    symmetric = plan.quant_method == SYMMETRIC_METHOD
    out: dict[str, Planned] = {
        structure.module_path(block, name): (
            spec.bits,
            (info.out_features, info.in_features),
            info.bias,
            plan.group_size_of(spec),
            plan.double_quant,
            symmetric,
        )
        for block, name, spec in plan.iter_modules(structure)
        for info in structure.linears
        if info.name == name and spec.bits != UNQUANTIZED
    }
    if plan.embed_bits != UNQUANTIZED:
        embed = (plan.embed_bits, structure.embed_shape, False, plan.group_size, False, symmetric)
        out[structure.embed_path] = embed
    head = structure.head_path
    if head is not None and plan.head_bits != UNQUANTIZED and structure.head_shape is not None:
        shape, bias = structure.head_shape, structure.head_bias
        out[head] = (plan.head_bits, shape, bias, plan.group_size, False, symmetric)
    return out


def _shared(structure: ModelStructure, plan: Plan) -> dict[str, str]:
    """The tied head that shares the embedding's codes, if the plan quantises them."""
    if structure.tied and structure.head_path is not None and plan.embed_bits != UNQUANTIZED:
        return {structure.head_path: structure.embed_path}
    return {}


def unwrapped_path(name: str) -> str:
    """A module's path in the model without PEFT's wrapping (``base_model.model.``, ``.base_layer``)."""
    name = name.removeprefix(_PEFT_PREFIX)
    return ".".join(part for part in name.split(".") if part != "base_layer")


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Unwrapped path -> QuantLinear / QuantEmbedding, wherever they sit in ``model``."""
    from qradaptor.quant.modules import QuantEmbedding, QuantLinear

    return {
        unwrapped_path(name): module
        for name, module in model.named_modules()
        if isinstance(module, QuantLinear | QuantEmbedding)
    }


def save_packed_base(
    model: nn.Module,
    structure: ModelStructure,
    plan: Plan,
    path: str | os.PathLike[str],
    *,
    model_fingerprint: str = "",
) -> Path:
    """Writes the quantised modules of ``model`` (possibly PEFT-wrapped) to ``path`` atomically.

    Args:
        model: a model quantised by ``quantize_model_`` / ``apply_plan`` with ``plan``.
        structure: its structure (what ``quantize_model_`` returned).
        plan: the plan it was quantised with.
        path: the .safetensors file to write (temp file in the same folder, then renamed).
        model_fingerprint: a name for the unquantised weights, kept in the metadata.

    Returns:
        The path written.

    Raises:
        ValueError: if the model's packed modules are not the ones ``plan`` quantises.
    """
    from safetensors.torch import save_file

    found = quantized_modules(model)
    planned = _planned(structure, plan)
    shared = _shared(structure, plan)
    extra = sorted(set(found) - set(planned))
    if extra:
        raise ValueError(f"model has packed modules the plan does not quantise, e.g. {extra[:3]}")
    tensors: dict[str, torch.Tensor] = {}
    for name, (bits, *_) in planned.items():
        module = found.get(name)
        if module is None or module.bits != bits:
            got = "no packed module" if module is None else f"{module.bits} bits"
            raise ValueError(f"model does not match plan {plan.plan_hash}: {name} has {got}, not {bits} bits")
        if name in shared:
            continue
        parts = {"qweight": module.qweight, "scale": module.scale}
        if module.zero is not None:  # a symmetric fit has none
            parts["zero"] = module.zero
        if getattr(module, "double_quant", False):
            parts.update(scale_meta=module.scale_meta, zero_meta=module.zero_meta)
        if getattr(module, "bias", None) is not None:
            parts["bias"] = module.bias
        tensors.update({f"{name}.{k}": t.detach().cpu().contiguous() for k, t in parts.items()})
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "plan_hash": plan.plan_hash,
        "plan": plan.to_json(),
        "bits": json.dumps({name: spec[0] for name, spec in planned.items()}),
        "shared": json.dumps(shared),
        "model_signature": structure.signature,
        "model_fingerprint": model_fingerprint,
    }
    from qradaptor.atomic import atomic_file

    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path).expanduser()


def read_packed_header(path: str | os.PathLike[str]) -> PackedHeader:
    """The metadata of packed base file ``path`` (fast: no tensor is read).

    Raises:
        ValueError: if the file is missing or not a packed base of a known format version.
    """
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ValueError(f"packed base file {os.fspath(path)!r} does not exist")
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types on a bad header
        raise ValueError(f"packed base file {os.fspath(path)!r} is not a safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"file {os.fspath(path)!r} is not a packed base (format {meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"packed base file {os.fspath(path)!r} has format version {meta.get('format_version')!r}; "
            f"this qradaptor reads version {FORMAT_VERSION}"
        )
    return PackedHeader(
        plan_hash=meta["plan_hash"],
        plan=Plan.from_json(meta["plan"]),
        bits={k: int(v) for k, v in json.loads(meta["bits"]).items()},
        shared=json.loads(meta["shared"]),
        model_signature=meta["model_signature"],
        model_fingerprint=meta.get("model_fingerprint", ""),
    )


def check_packed_plan(header: PackedHeader, plan: Plan, path: str | os.PathLike[str]) -> None:
    """Raises ValueError unless the base file ``path`` was packed with ``plan``."""
    if header.plan_hash != plan.plan_hash:
        raise ValueError(
            f"packed base file {os.fspath(path)!r} was quantised with plan {header.plan.name or ''}"
            f"({header.plan_hash}), not with plan {plan.name or ''}({plan.plan_hash})"
        )


def load_packed_base_(model: nn.Module, plan: Plan, path: str | os.PathLike[str]) -> ModelStructure:
    """Quantises unquantised ``model`` in place with the codes stored in ``path`` (no fitting).

    The result equals ``quantize_model_(model, plan)`` of the model the file was packed from.

    Returns:
        The model's structure (as ``quantize_model_`` returns it).

    Raises:
        ValueError: if the file is not a packed base for ``plan`` and this model, or a
            planned module is missing from it or has other bits or shapes.
    """
    import torch
    from safetensors import safe_open

    from qradaptor.models.structure import inspect_model
    from qradaptor.quant.bitpack import packed_row_bytes
    from qradaptor.quant.metaquant import META_BLOCK
    from qradaptor.quant.modules import QuantEmbedding, QuantLinear
    from qradaptor.quant.quantizer import META_DTYPE, QuantizedTensor

    where = f"packed base file {os.fspath(path)!r}"
    header = read_packed_header(path)
    check_packed_plan(header, plan, path)
    structure = inspect_model(model)
    plan.validate(structure)
    if header.model_signature != structure.signature:
        raise ValueError(
            f"{where} was packed from another model (signature {header.model_signature}); "
            f"this one is a {structure.describe()} with signature {structure.signature}"
        )
    planned, shared = _planned(structure, plan), _shared(structure, plan)
    built: dict[str, nn.Module] = {}
    with safe_open(os.fspath(path), framework="pt") as handle:
        keys = set(handle.keys())
        for name, (bits, (rows, cols), bias, group_size, double_quant, symmetric) in planned.items():
            if name in shared:
                continue
            if header.bits.get(name) != bits:
                raise ValueError(f"{where}: {name} has bits {header.bits.get(name)}, the plan says {bits}")
            old = model.get_submodule(name)
            groups = cols // group_size
            meta_dtype = torch.uint8 if double_quant else META_DTYPE
            expect = {
                "qweight": ((rows, packed_row_bytes(cols, bits)), torch.uint8),
                "scale": ((rows, groups), meta_dtype),
            }
            if not symmetric:
                expect["zero"] = ((rows, groups), meta_dtype)
            if double_quant:
                blocks = -(-rows * groups // META_BLOCK)
                expect.update(scale_meta=((blocks, 2), META_DTYPE), zero_meta=((blocks, 2), META_DTYPE))
            if bias:
                expect["bias"] = ((rows,), None)
            parts = {}
            for part, (shape, dtype) in expect.items():
                if f"{name}.{part}" not in keys:
                    raise ValueError(f"{where} has no {name}.{part}")
                t = handle.get_tensor(f"{name}.{part}")
                if tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype):
                    raise ValueError(
                        f"{where}: {name}.{part} is {t.dtype} {tuple(t.shape)}, expected {shape}"
                        + (f" {dtype}" if dtype is not None else "")
                    )
                parts[part] = t.to(old.weight.device)
            codes = (parts["qweight"], parts["scale"], parts.get("zero"))
            meta = (parts["scale_meta"], parts["zero_meta"]) if double_quant else ()
            qt = QuantizedTensor(*codes, (rows, cols), bits, group_size, *meta)
            dtype = old.weight.dtype
            if name == structure.embed_path:
                built[name] = QuantEmbedding(qt, dtype, old.padding_idx)
            else:
                b = parts.get("bias")
                built[name] = QuantLinear(qt, None if b is None else b.to(dtype), dtype)
    for head, embed in shared.items():
        built[head] = built[embed].as_linear()  # shares the codes, as quantize_model_ does
    for name, module in built.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, module)
    if shared and hasattr(model, "config"):
        model.config.tie_word_embeddings = False  # as quantize_model_: the head holds codes now
    model.requires_grad_(False)
    return structure
