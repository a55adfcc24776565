"""A training run as a compressed-tensors folder that transformers loads and vLLM serves.

The folder: ``config.json`` with a ``quantization_config`` (``quant_method:
compressed-tensors``, format ``pack-quantized``, one config group per (bits, group size) whose
``targets`` are the exact module names at that width, ``ignore`` the 16-bit linears and the
head), ``model.safetensors`` (each quantised linear as ``weight_packed``, ``weight_scale``,
``weight_zero_point``, ``weight_shape``; everything else dense in the export dtype), the
tokenizer and generation config, and ``qradaptor_export.json`` recording how each linear was
written and its relative error.

The adapter is merged first, as ``runs.merged_run`` does (the base dequantised as trained, the
adapter merged in float32). A quantised linear the merge left unchanged whose zero points are
all integers is written as our codes unchanged ("codes"); so is every linear of a plan whose
quant_method is "symmetric" that the merge left unchanged (compressed-tensors' symmetric scheme,
no zero point, ``symmetric: true``), where the dtype holds its float16 scales. Every other one
is re-quantised with integer zero points ("requantised", ``ct_codes.integer_zero_fit`` after the
plan's quantiser; a symmetric plan's by the symmetric rule again, ``ct_codes.symmetric_refit``)
from a target that ``refit`` names:

    "source"  W_0 + (W_merged - W_hat): the source weight with the adapter's change added (the
              merge of a LoRA into the 16-bit base that serving usually quantises). The
              default: one quantisation away from W_0, as the run's base is.
    "merged"  W_merged itself. Closer to the run on paper, but a second quantisation of a
              weight that already sits on a 2**b-level grid with a real-valued offset: at 4
              bits it costs as much again as the first (SmolLM2's perplexities for both are
              in docs/EXPORT.md).

Either way the record gives each linear's error against W_merged, the run's weight. The plan
must be one vLLM serves (``vllm_constraints``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.export.ct_codes import (
    IntegerCodes,
    exact_codes,
    integer_zero_fit,
    pack_codes,
    scheme_args,
    symmetric_refit,
)
from qradaptor.export.vllm_constraints import check_vllm_plan
from qradaptor.plan import SYMMETRIC_METHOD, UNQUANTIZED

if TYPE_CHECKING:
    import torch

    from qradaptor.models.structure import ModelStructure
    from qradaptor.runs import RunFiles

REFITS = ("source", "merged")
"""What a re-quantised linear is fitted to (module docstring)."""
SCALE_DTYPES = ("float16", "bfloat16", "float32")
"""Export dtypes: of the dense tensors and the scales (float16 holds our scales exactly)."""
WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "qradaptor_export.json"


@dataclass(frozen=True)
class LinearRecord:
    """One quantised linear of the written folder."""

    module: str
    """Module path, e.g. ``model.layers.3.self_attn.q_proj``."""
    bits: int
    """The plan's bits for it."""
    group_size: int
    """Its group size."""
    how: str
    """"codes" (ours unchanged) or "requantised" (integer zero points fitted)."""
    rel_error: float
    """||W - W_ct||_F / ||W||_F: the merged weight (the run's) against the folder's, dequantised."""
    target_error: float
    """The same against the re-quantisation's target (``refit``); equal to rel_error for "merged"."""


@dataclass(frozen=True)
class CTExport:
    """What was written, for the summary line and the record."""

    linears: tuple[LinearRecord, ...]
    """Every quantised linear, in model order."""
    source: str
    """The base model the run was trained on."""
    plan_hash: str
    """The run's plan."""
    dtype: str
    """Dtype of the dense tensors and the scales."""
    adapter: str
    """"merged", or "none" for a run without one."""
    refit: str
    """What re-quantised linears were fitted to (``REFITS``)."""
    planned_bytes: int
    """The plan's bytes without adapters (``memory.plan_memory``)."""
    tensor_bytes: int
    """Bytes of the tensors written."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the counts by how and the largest error."""
        worst = max(self.linears, key=lambda r: r.rel_error, default=None)
        return {
            "source": self.source,
            "plan_hash": self.plan_hash,
            "dtype": self.dtype,
            "adapter": self.adapter,
            "refit": self.refit,
            "planned_bytes": self.planned_bytes,
            "tensor_bytes": self.tensor_bytes,
            "how": dict(Counter(r.how for r in self.linears)),
            "max_rel_error": None
            if worst is None
            else {"module": worst.module, "rel_error": worst.rel_error},
            "linears": [asdict(r) for r in self.linears],
        }


def ct_source(files: RunFiles, run_dir: str | Path, model: str | None) -> tuple[str, ModelStructure]:
    """The run's source and structure, the plan checked for vLLM before any weight loads.

    Raises:
        ValueError: for an NF4 run, a run that records no source, or a plan vLLM cannot serve.
    """
    from qradaptor.models.loading import load_config, resolve_source
    from qradaptor.models.structure import structure_from_config
    from qradaptor.runs import NF4_METHODS

    if files.method in NF4_METHODS:
        raise ValueError(
            f"run {str(run_dir)!r} was trained on a bitsandbytes NF4 base, which compressed-tensors' "
            "integer formats cannot hold; train with --method qlora to export compressed-tensors"
        )
    if model is None and files.source is None:
        raise ValueError(f"run {str(run_dir)!r} does not record its base model; name it with --model")
    resolved = resolve_source(model or files.source)
    structure = structure_from_config(load_config(resolved.source))
    files.plan.validate(structure)
    check_vllm_plan(files.plan, structure)
    return resolved.source, structure


def export_compressed_tensors(
    run_dir: str | Path,
    folder: str | Path,
    *,
    model: str | None = None,
    dtype: str = "float16",
    refit: str = "source",
    progress: bool = False,
) -> CTExport:
    """Writes run ``run_dir`` into the empty folder ``folder`` (module docstring).

    Args:
        run_dir: a training run folder (plan.json, adapter/, base.safetensors).
        folder: an existing empty folder (the caller renames it into place).
        model: the base model; omitted: the one the run records.
        dtype: of the dense tensors and the scales, one of ``SCALE_DTYPES``.
        refit: what a re-quantised linear is fitted to, one of ``REFITS`` (module docstring).
        progress: show the weight fits of a run without a packed base.

    Returns:
        How each quantised linear was written and its error; the planned and written bytes.

    Raises:
        ValueError: as :func:`ct_source`, or for a ``dtype`` or ``refit`` not among the choices.
        ImportError: without the ``compressed-tensors`` package.
    """
    import torch
    from safetensors.torch import save_file

    from qradaptor.assemble import peft_load, quantized_base
    from qradaptor.memory import plan_memory
    from qradaptor.packed import quantized_modules
    from qradaptor.quant.quantizer import dequantize
    from qradaptor.runs import dequantize_model_, read_run

    if dtype not in SCALE_DTYPES:
        raise ValueError(f"dtype must be one of {SCALE_DTYPES}, got {dtype!r}")
    if refit not in REFITS:
        raise ValueError(f"refit must be one of {REFITS}, got {refit!r}")
    import compressed_tensors  # noqa: F401  (fail before the model loads)

    the_dtype = getattr(torch, dtype)
    files = read_run(run_dir)
    source, _ = ct_source(files, run_dir, model)
    loaded, structure, plan, _ = quantized_base(
        source, files.plan, files.adapter, files.base, torch.float32, "cpu", progress
    )
    codes = {name: module.quantized() for name, module in quantized_modules(loaded.model).items()}
    merged = loaded.model
    dequantize_model_(merged, structure)
    if files.adapter is not None:
        merged = peft_load(merged, files.adapter).merge_and_unload()
    weights = {name: t.detach().float() for name, t in merged.state_dict().items()}
    source_weights = _source_weights(source, structure, plan) if refit == "source" else {}

    tensors: dict[str, torch.Tensor] = {}
    records, groups = [], {}
    for block, name, spec in plan.iter_modules(structure):
        path = structure.module_path(block, name)
        if spec.bits == UNQUANTIZED:
            continue
        weight = weights.pop(f"{path}.weight")
        group_size = plan.group_size_of(spec)
        qt = codes[path]
        if path in source_weights:  # W_0 + (W_merged - W_hat)
            target = source_weights.pop(path) + (weight - dequantize(qt))
        else:
            target = weight
        ic, how = _integer_codes(weight, target, qt, spec.bits, group_size, plan.quant_method, the_dtype)
        written = ic.dequantize()
        error = float((weight - written).norm() / weight.norm().clamp_min(1e-30))
        target_error = float((target - written).norm() / target.norm().clamp_min(1e-30))
        records.append(LinearRecord(path, spec.bits, group_size, how, error, target_error))
        groups.setdefault((spec.bits, group_size), []).append(path)
        tensors.update({f"{path}.{key}": value for key, value in pack_codes(ic).items()})
    if getattr(merged.config, "tie_word_embeddings", False) and structure.head_path is not None:
        weights.pop(f"{structure.head_path}.weight", None)  # transformers ties it back on load
    tensors.update({key: value.to(the_dtype).contiguous() for key, value in weights.items()})

    out = Path(folder)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = merged.config
    config.quantization_config = quantization_config(plan, structure, groups)
    config.dtype = dtype
    config.save_pretrained(out)
    if getattr(merged, "generation_config", None) is not None:
        merged.generation_config.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    memory = plan_memory(structure, plan)
    return CTExport(
        tuple(records),
        source,
        plan.plan_hash,
        dtype,
        "merged" if files.adapter is not None else "none",
        refit,
        memory.total_bytes - memory.adapter_bytes,
        sum(t.numel() * t.element_size() for t in tensors.values()),
    )


def _source_weights(source: str, structure: ModelStructure, plan: Any) -> dict[str, torch.Tensor]:
    """Path -> the source's float32 weight, for every linear the plan quantises."""
    import torch

    from qradaptor.models.loading import load_model

    state = load_model(source, dtype=torch.float32).model.state_dict()
    return {
        structure.module_path(block, name): state[f"{structure.module_path(block, name)}.weight"].float()
        for block, name, spec in plan.iter_modules(structure)
        if spec.bits != UNQUANTIZED
    }


def _integer_codes(
    weight: torch.Tensor,
    target: torch.Tensor,
    qt: Any,
    bits: int,
    group_size: int,
    method: str,
    scale_dtype: torch.dtype,
) -> tuple[IntegerCodes, str]:
    """(the linear as integer codes, "codes" or "requantised"); ``weight`` is the merged one,
    ``target`` what a re-quantisation fits."""
    import torch

    from qradaptor.quant.quantizer import dequantize, quantize

    on_grid = torch.equal(dequantize(qt), weight)
    if on_grid:
        exact = exact_codes(qt, scale_dtype)
        if exact is not None:
            return exact, "codes"
    if qt.symmetric:  # no zero to make an integer: the symmetric rule again, on the target
        return symmetric_refit(target, bits, group_size, scale_dtype), "requantised"
    if on_grid and target is weight:
        start = qt  # the run's own fit: the weight still lies on its grid
    else:  # fit the target afresh with the plan's quantiser
        start = quantize(target, bits, group_size, method)  # type: ignore[arg-type]
    scale, zero = start.metadata()
    return integer_zero_fit(target, bits, group_size, scale, zero, scale_dtype), "requantised"


def quantization_config(
    plan: Any, structure: ModelStructure, groups: dict[tuple[int, int], list[str]]
) -> dict[str, Any]:
    """The ``quantization_config`` of config.json, validated by compressed-tensors' own model.

    One config group per (bits, group size), e.g. ``int4_g32``, targeting its modules by exact
    name, symmetric for a plan of quant_method "symmetric"; ``ignore`` lists the 16-bit linears
    and the head.
    """
    from compressed_tensors.quantization import QuantizationConfig

    ignore = [
        structure.module_path(block, name)
        for block, name, spec in plan.iter_modules(structure)
        if spec.bits == UNQUANTIZED
    ]
    if structure.head_path is not None:
        ignore.append(structure.head_path)
    symmetric = plan.quant_method == SYMMETRIC_METHOD
    config_groups = {
        f"int{bits}_g{group_size}": {"targets": paths, "weights": scheme_args(bits, group_size, symmetric)}
        for (bits, group_size), paths in sorted(groups.items())
    }
    config = QuantizationConfig.model_validate(
        {
            "config_groups": config_groups,
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "ignore": ignore,
        }
    )
    return config.model_dump(exclude_none=True) | {"quant_method": "compressed-tensors"}


def write_record(path: Path, run: str | Path, written: CTExport) -> None:
    """``qradaptor_export.json``: the run, the plan hash and every linear's error."""
    record = {"run": str(Path(run).resolve()), "format": "compressed-tensors", **written.to_dict()}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
