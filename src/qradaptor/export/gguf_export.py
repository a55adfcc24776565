"""A training run as one GGUF file for llama.cpp, every block linear at the type its plan gave it.

The adapter is merged first (``--adapter merged``): the base is dequantised as trained, the
adapter merged in float32 (as ``runs.merged_run`` does), and each tensor is then written as
``gguf_types`` maps its bits. A quantised weight the merge left unchanged (rank 0, or a zero
adapter) is written as our codes unchanged where the type holds them; every other weight is
re-quantised: to Q4_1/Q5_1 with the plan's own quantiser at group 32 (HQQ beats GGUF's
min-max), to a K-quant by ``kquants`` (ggml's reference quantisers), to Q8_0 by ``gguf``. A
plan with quant_method "symmetric" maps to the symmetric types (Q4_0, Q5_0, Q8_0 hold its codes,
``gguf_types.SYMMETRIC``), re-quantised to them with the same rounding as llama.cpp's. A
K-quant planned for rows that are not a multiple of 256 inputs falls back to a 32-block type
(``gguf_types.row_type``). Each written tensor is read back through ``gguf``'s dequantiser and
its error against the merged weight recorded (``TensorRecord``), with its bytes and the plan's.

A plan llama.cpp serves as planned (``llama_cpp_constraints``: symmetric, group 32, bits 4, 5,
8 or 16, as ``--serve llama.cpp`` makes) also writes its 16-bit block linears as F16, the
plan's 2 bytes a weight, rather than as the source's type; the record says how many block
tensors went in at the plan's type and bytes (all of them unless an adapter was merged in).

With ``--adapter separate`` nothing is merged: the base is written as trained (a quantised
layer's codes unchanged wherever its type holds them, adapter or not) and the adapter goes to
a second file, a GGUF LoRA adapter that llama.cpp applies at run time (``gguf_lora``).

Everything that is not a block linear, the embedding or the head (norms, the tokenizer, the
chat template, every metadata key) is copied from the source GGUF unchanged. Only GGUF-sourced
Llama-architecture models are exported for now: a Hugging Face source would need its tokenizer
converted (llama.cpp's ``convert_hf_to_gguf.py`` does that for the ``--merged`` export).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.export.gguf_lora import lora_arrays, lora_weights, write_lora_gguf
from qradaptor.export.gguf_types import (
    BLOCK,
    DENSE_TYPE,
    GGUF_TYPES,
    check_gguf_plan,
    codes_to_blocks,
    dequantize_blocks,
    gguf_type,
    holds_codes,
    llama_rows,
    llama_rows_codes,
    quantize_dense,
    row_type,
    type_family,
    type_map,
)
from qradaptor.plan import UNQUANTIZED

if TYPE_CHECKING:
    import numpy as np
    import torch

    from qradaptor.models.structure import ModelStructure
    from qradaptor.runs import RunFiles

ARCHITECTURES = ("llama",)
"""GGUF architectures exported (their q/k row order is handled by ``llama_rows``)."""
ADAPTER_MODES = ("merged", "separate")
"""What ``--adapter`` takes: merged into the weights, or a GGUF LoRA adapter beside the base."""
HOW = ("codes", "source", "requantised", "dense")
"""How a tensor was written: our codes unchanged; the source's bytes unchanged; re-quantised
from the merged weight; a dense F16 copy of a merged 16-bit weight."""


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of the written GGUF."""

    name: str
    """GGUF name, e.g. ``blk.3.attn_q.weight``."""
    module: str
    """Our module path (``model.layers.3.self_attn.q_proj``); "" for a tensor copied as is."""
    bits: int
    """The plan's bits for it (16: unquantised)."""
    type: str
    """The GGUF type written."""
    how: str
    """One of ``HOW``."""
    rel_error: float
    """||W - W_gguf||_F / ||W||_F: the merged weight against the file's, dequantised by gguf."""
    nbytes: int = 0
    """Bytes of its data in the file."""
    planned_bytes: int = 0
    """The plan's bytes for this weight (``memory.plan_memory``); 0 for a tensor the plan does
    not price one by one (norms)."""
    fallback: str = ""
    """Why the type differs from the one its bits map to (a K-quant's rows not a multiple of
    256 inputs); "" when it does not."""


@dataclass(frozen=True)
class GGUFExport:
    """What was written, for the summary line and the JSON sidecar."""

    tensors: tuple[TensorRecord, ...]
    """Every tensor in file order."""
    source: str
    """The source GGUF the metadata, tokenizer and other tensors came from."""
    plan_hash: str
    """The run's plan."""
    adapter: str
    """How the adapter went in (``ADAPTER_MODES``); "none" for a run without one."""
    planned_bytes: int
    """The plan's bytes without adapters (``memory.plan_memory``): what the file would hold if
    every tensor took the plan's bits exactly."""
    tensor_bytes: int
    """Bytes of the tensor data written (the file adds the header and metadata)."""
    lora_tensors: int = 0
    """Adapted linears in the GGUF LoRA adapter (``--adapter separate``); 0: none written."""
    type_map: tuple[tuple[int, str], ...] = tuple(GGUF_TYPES.items())
    """(bits, GGUF type) used, ``GGUF_TYPES`` with any ``--gguf-types`` choices applied."""
    llama_cpp_plan: str = ""
    """Why the plan is not one llama.cpp serves as planned (``llama_cpp_mismatch``); "": it is."""
    block_paths: frozenset[str] = frozenset()
    """Our paths of the block linears (the tensors ``llama_cpp_plan`` is about)."""

    def as_planned(self) -> dict[str, Any]:
        """Whether the plan is llama.cpp-exact, and how many block tensors went in unchanged (our
        codes as Q4_0/Q5_0/Q8_0, or F16 at 16 bits) at exactly the plan's bytes, of how many."""
        block = [t for t in self.tensors if t.module in self.block_paths]
        kept = sum(t.nbytes == t.planned_bytes and (t.how == "codes" or t.type == DENSE_TYPE) for t in block)
        plan = self.llama_cpp_plan or "llama.cpp-exact"
        return {"plan": plan, "block_tensors": len(block), "unchanged_at_planned_bytes": kept}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the counts by type and how, the fallbacks, the planned tensors' bytes
        against the plan's, the worst error per type and overall."""
        worst = max(self.tensors, key=lambda t: t.rel_error)
        planned, mapped = [t for t in self.tensors if t.module], dict(self.type_map)
        by_type: dict[str, float] = {}
        for t in planned:
            by_type[t.type] = max(by_type.get(t.type, 0.0), t.rel_error)
        return {
            "source": self.source,
            "plan_hash": self.plan_hash,
            "adapter": self.adapter,
            "type_map": {str(bits): name for bits, name in self.type_map},
            "planned_bytes": self.planned_bytes,
            "tensor_bytes": self.tensor_bytes,
            "planned_tensor_bytes": {
                "written": sum(t.nbytes for t in planned),
                "plan": sum(t.planned_bytes for t in planned),
            },
            "lora_tensors": self.lora_tensors,
            "llama_cpp_as_planned": self.as_planned(),
            "types": dict(Counter(t.type for t in self.tensors)),
            "how": dict(Counter(t.how for t in self.tensors)),
            "fallbacks": dict(Counter(f"{mapped[t.bits]} -> {t.type}" for t in planned if t.fallback)),
            "max_rel_error": {"tensor": worst.name, "rel_error": worst.rel_error},
            "max_rel_error_by_type": by_type,
            "tensors": [asdict(t) for t in self.tensors],
        }


def gguf_source(files: RunFiles, run_dir: str | Path, model: str | None) -> tuple[str, ModelStructure]:
    """The run's source GGUF and structure, checked for export before any weight is loaded.

    Raises:
        ValueError: for an NF4 run, a run that records no source, a source that is not a
            GGUF of a supported architecture, or a plan with no GGUF type for some tensor.
    """
    from qradaptor.models.gguf_header import read_header
    from qradaptor.models.loading import load_config
    from qradaptor.models.sources import resolve_source
    from qradaptor.models.structure import structure_from_config
    from qradaptor.runs import NF4_METHODS

    if files.method in NF4_METHODS:
        raise ValueError(
            f"run {str(run_dir)!r} was trained on a bitsandbytes NF4 base, which has no GGUF type; "
            "train with --method qlora to export a GGUF"
        )
    if model is None and files.source is None:
        raise ValueError(f"run {str(run_dir)!r} does not record its base model; name it with --model")
    resolved = resolve_source(model or files.source)
    if resolved.origin not in ("embedded", "gguf"):
        raise ValueError(
            f"GGUF export copies the tokenizer, chat template and metadata from a GGUF source; run "
            f"{str(run_dir)!r} was trained on {resolved.source!r} ({resolved.origin}), which is not one "
            "yet: export --merged and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    architecture = read_header(resolved.source).architecture
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"GGUF export supports architectures {list(ARCHITECTURES)}; {resolved.source!r} is "
            f"{architecture!r}"
        )
    structure = structure_from_config(load_config(resolved.source))
    check_gguf_plan(files.plan, structure)
    return resolved.source, structure


def export_gguf(
    run_dir: str | Path,
    path: str | Path,
    *,
    model: str | None = None,
    adapter: str = "merged",
    lora_path: str | Path | None = None,
    types: dict[int, str] | None = None,
    progress: bool = False,
) -> GGUFExport:
    """Writes run ``run_dir`` as a GGUF file at ``path`` (module docstring).

    Args:
        run_dir: a training run folder (plan.json, adapter/, base.safetensors).
        path: the file to write (the caller makes it atomic).
        model: the base model; omitted: the one the run records. Must be a GGUF.
        adapter: "merged": the adapter merged into the weights before they are quantised;
            "separate": the base as trained (its codes unchanged where the type holds them) and
            the adapter written to ``lora_path`` as a GGUF LoRA adapter (``gguf_lora``).
        lora_path: where the adapter goes with "separate" (needed when the run has one).
        types: bits -> GGUF type for some bit-widths (``--gguf-types``), checked against the
            choices of the plan's quantiser (``gguf_types.type_map``); the rest take its
            defaults (``GGUF_TYPES``, or ``gguf_types.SYMMETRIC`` for a symmetric plan).
        progress: show the weight fits of a run without a packed base.

    Returns:
        Every tensor's type, how it was written and its error; the planned and written bytes.

    Raises:
        ValueError: as :func:`gguf_source`, for an ``adapter`` mode not in ``ADAPTER_MODES``, or
            "separate" for a DoRA or AdaLoRA adapter, or without ``lora_path``.
    """
    import torch
    from gguf import GGUFReader

    from qradaptor.assemble import peft_load, quantized_base
    from qradaptor.export.llama_cpp_constraints import llama_cpp_mismatch
    from qradaptor.memory import plan_memory
    from qradaptor.packed import quantized_modules
    from qradaptor.runs import dequantize_model_, read_run

    if adapter not in ADAPTER_MODES:
        raise ValueError(f"adapter must be one of {ADAPTER_MODES}, got {adapter!r}")
    files = read_run(run_dir)
    source, _ = gguf_source(files, run_dir, model)
    types = type_map(types or {}, files.plan.quant_method)  # refused before any weight loads
    loaded, structure, plan, _ = quantized_base(
        source, files.plan, files.adapter, files.base, torch.float32, "cpu", progress
    )
    codes = {name: module.quantized() for name, module in quantized_modules(loaded.model).items()}
    merged = loaded.model
    dequantize_model_(merged, structure)
    weights = {name: t.detach() for name, t in merged.state_dict().items()}  # the base as trained
    config = merged.config
    lora = {}
    if files.adapter is not None:
        peft = peft_load(merged, files.adapter)
        if adapter == "merged":
            weights = {name: t.detach() for name, t in peft.merge_and_unload().state_dict().items()}
        elif lora_path is None:
            raise ValueError("adapter 'separate' needs lora_path, the adapter file to write")
        else:
            lora = lora_weights(peft, files.adapter)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}

    memory = plan_memory(structure, plan)
    priced = {layer.path: layer.weight_bytes for layer in memory.layers}
    priced[structure.embed_path] = memory.embed_bytes
    if structure.head_path is not None:
        priced[structure.head_path] = memory.head_bytes
    reader = GGUFReader(source)
    planned = _planned_tensors(structure, plan, reader)
    not_exact = llama_cpp_mismatch(plan, structure)
    block_paths = frozenset(structure.module_path(b, n) for b, n, _ in plan.iter_modules(structure))
    records, arrays, lora_arrays_ = [], {}, {}
    for tensor in reader.tensors:
        if tensor.name not in planned:  # norms and the like: the source's bytes
            arrays[tensor.name] = (tensor.data, tensor.tensor_type.name)
            kind = tensor.tensor_type.name
            records.append(
                TensorRecord(tensor.name, "", UNQUANTIZED, kind, "source", 0.0, int(tensor.data.nbytes))
            )
            continue
        path_, bits = planned[tensor.name]
        role = tensor.name.split(".")[-2]
        order = (lambda x, h=heads[role]: llama_rows(x, h)) if role in heads else (lambda x: x)
        weight = order(weights[f"{path_}.weight"].float())  # (rows, cols), llama.cpp's row order
        if path_ in lora:
            rows = (lambda x, h=heads[role]: llama_rows(x, h)) if role in heads else None
            lora_arrays_[tensor.name] = lora_arrays(lora[path_], plan.alpha, rows)
        qt = codes.get(path_)
        if qt is not None and role in heads:
            qt = llama_rows_codes(qt, heads[role])
        f16 = not not_exact and path_ in block_paths  # a 16-bit block linear as planned: F16
        data, type_name, how, fallback = _encode(tensor, weight, bits, qt, plan.quant_method, types, f16)
        error = _relative_error(weight, dequantize_blocks(data, type_name, tuple(weight.shape)))
        arrays[tensor.name] = (data, type_name)
        nbytes, price = int(data.nbytes), priced.get(path_, 0)
        records.append(TensorRecord(tensor.name, path_, bits, type_name, how, error, nbytes, price, fallback))
    _write(reader, arrays, path, records, plan.plan_hash)
    if lora_arrays_:
        assert lora_path is not None
        architecture = str(reader.fields["general.architecture"].contents())
        write_lora_gguf(lora_path, architecture, plan.alpha, lora_arrays_)
    return GGUFExport(
        tuple(records),
        source,
        plan.plan_hash,
        adapter if files.adapter is not None else "none",
        memory.total_bytes - memory.adapter_bytes,
        sum(int(a.nbytes) for a, _ in arrays.values()),
        len(lora_arrays_),
        tuple(sorted(types.items())),
        not_exact,
        block_paths,
    )


def _planned_tensors(structure: ModelStructure, plan: Any, reader: Any) -> dict[str, tuple[str, int]]:
    """GGUF name -> (our module path, the plan's bits) of every block linear, the embedding
    and an untied head; ValueError if the source lacks one."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, structure.num_blocks)
    wanted = {structure.module_path(b, n): spec.bits for b, n, spec in plan.iter_modules(structure)}
    wanted[structure.embed_path] = plan.embed_bits
    if structure.head_path is not None and not structure.tied:
        wanted[structure.head_path] = plan.head_bits
    present = {t.name for t in reader.tensors}
    out = {}
    for path, bits in wanted.items():
        name = names.get_name(f"{path}.weight", try_suffixes=(".weight",))
        if name is None or name not in present:
            raise ValueError(f"the source GGUF has no tensor for {path} (looked for {name!r})")
        out[name] = (path, bits)
    return out


def _encode(
    tensor: Any,
    weight: torch.Tensor,
    bits: int,
    qt: Any,
    method: str,
    types: dict[int, str],
    f16: bool = False,
) -> tuple[np.ndarray, str, str, str]:
    """(data, GGUF type, how, fallback) of one planned tensor; ``weight`` is the merged one.
    ``f16``: a 16-bit weight goes in as F16 (the source's bytes only if they are F16)."""
    import torch

    from qradaptor.quant.quantizer import dequantize, quantize

    if bits == UNQUANTIZED:
        source = tensor.tensor_type.name
        same = torch.equal(dequantize_blocks(tensor.data, source, tuple(weight.shape)), weight)
        if same and (not f16 or source == DENSE_TYPE):
            return tensor.data, source, "source", ""
        return quantize_dense(weight, DENSE_TYPE), DENSE_TYPE, "dense", ""
    planned = gguf_type(bits, where=tensor.name, types=types)
    type_name, fallback = row_type(planned, weight.shape[1], method)
    unchanged = qt is not None and torch.equal(dequantize(qt), weight)
    if unchanged and holds_codes(type_name, qt.bits, qt.group_size, qt.symmetric):
        return codes_to_blocks(qt, type_name), type_name, "codes", fallback
    code_bits = type_family(method).code_bits
    if type_name in code_bits:
        refit = quantize(weight, code_bits[type_name], BLOCK, method)  # type: ignore[arg-type]
        return codes_to_blocks(refit, type_name), type_name, "requantised", fallback
    how = "dense" if type_name == DENSE_TYPE else "requantised"  # F16 asked for (--gguf-types)
    return quantize_dense(weight, type_name), type_name, how, fallback


def _relative_error(weight: torch.Tensor, written: torch.Tensor) -> float:
    return float((weight - written).norm() / weight.norm().clamp_min(1e-30))


def _write(
    reader: Any,
    arrays: dict[str, tuple[Any, str]],
    path: str | Path,
    records: list[TensorRecord],
    plan_hash: str,
) -> None:
    """The source's metadata (its file type updated) and ``arrays`` in the source's tensor order."""
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

    architecture = str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(str(path), architecture)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    planned_types = Counter(record.type for record in records if record.module)
    common = planned_types.most_common(1)[0][0]  # llama.cpp shows it as the file's type
    writer.add_file_type(int(getattr(LlamaFileType, f"MOSTLY_{common}", LlamaFileType.GUESSED)))
    writer.add_string("qradaptor.plan_hash", plan_hash)
    for name, (data, type_name) in arrays.items():
        writer.add_tensor(name, data, raw_dtype=GGMLQuantizationType[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
