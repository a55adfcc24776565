"""apply_plan: turn a model and a Plan into a quantised model with LoRA adapters.

Each linear of each block is quantised at its planned bits (a packed ``QuantLinear``, or a
dense "simulated" copy of the dequantised weight for fast search-time scoring) and gets a
PEFT LoRA adapter of its planned rank; embedding and head are quantised only when the plan
says so; every other weight is frozen. Only this module changes a model for good
(sensitivity profiling swaps single blocks temporarily and puts them back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from qradaptor.lora import lora_config
from qradaptor.models.structure import LinearInfo, ModelStructure, inspect_model
from qradaptor.plan import UNQUANTIZED, Plan
from qradaptor.quant.modules import QuantEmbedding, QuantLinear, simulated_linear

if TYPE_CHECKING:
    from peft import PeftModel


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, module)


def _dense_weight(module: nn.Module, info: LinearInfo) -> torch.Tensor:
    """(out, in) weight of an nn.Linear or a GPT-2 Conv1D (stored (in, out))."""
    return module.weight.data if info.kind == "linear" else module.weight.data.t()


def _quantized_linear(
    module: nn.Module, info: LinearInfo, bits: int, plan: Plan, simulated: bool
) -> nn.Module:
    weight = _dense_weight(module, info)
    bias = None if module.bias is None else module.bias.data
    if simulated:
        return simulated_linear(weight, bias, bits, plan.group_size, plan.quant_method)  # type: ignore[arg-type]
    return QuantLinear.from_weight(weight, bias, bits, plan.group_size, plan.quant_method)  # type: ignore[arg-type]


def quantize_model_(model: nn.Module, plan: Plan, *, simulated: bool = False) -> ModelStructure:
    """Quantises ``model`` in place as ``plan`` says; no adapters. Returns its structure.

    Raises:
        ValueError: if the plan does not fit the model (see ``Plan.validate``).
    """
    structure = inspect_model(model)
    plan.validate(structure)
    infos = {info.name: info for info in structure.linears}
    for block, name, spec in plan.iter_modules(structure):
        if spec.bits == UNQUANTIZED:
            continue
        path = structure.module_path(block, name)
        new = _quantized_linear(model.get_submodule(path), infos[name], spec.bits, plan, simulated)
        _set_module(model, path, new)
    embed = model.get_submodule(structure.embed_path)
    if plan.embed_bits != UNQUANTIZED:
        qembed = QuantEmbedding.from_embedding(embed, plan.embed_bits, plan.group_size, plan.quant_method)  # type: ignore[arg-type]
        _set_module(model, structure.embed_path, qembed)
        if structure.tied and structure.head_path is not None:
            _set_module(model, structure.head_path, qembed.as_linear())  # shares the codes
    if plan.head_bits != UNQUANTIZED and structure.head_path is not None and not structure.tied:
        head = model.get_submodule(structure.head_path)
        bias = None if head.bias is None else head.bias.data
        qhead = QuantLinear.from_weight(
            head.weight.data, bias, plan.head_bits, plan.group_size, plan.quant_method
        )  # type: ignore[arg-type]
        _set_module(model, structure.head_path, qhead)
    if plan.embed_bits != UNQUANTIZED and structure.tied and hasattr(model, "config"):
        # The head now shares packed codes, not a Parameter: stop transformers re-tying it.
        model.config.tie_word_embeddings = False
    model.requires_grad_(False)
    return structure


def apply_plan(
    model: nn.Module,
    plan: Plan,
    *,
    simulated: bool = False,
    lora_dropout: float = 0.0,
) -> PeftModel | nn.Module:
    """Quantises ``model`` per ``plan`` and attaches LoRA adapters of the planned ranks.

    The model is changed in place (its linears are replaced); pass a copy to keep the
    original. Only the LoRA parameters are trainable afterwards.

    Args:
        model: a causal LM (Llama/Qwen/Mistral-style or GPT-2-style).
        plan: the allocation; validated against the model first.
        simulated: store quantised weights densely (quantise then dequantise) instead of
            packed; same outputs, faster steps, no memory saving. For search-time scoring.
        lora_dropout: dropout on the adapter input.

    Returns:
        A ``peft.PeftModel`` when some rank is > 0, else the (frozen) quantised model.

    Raises:
        ValueError: if the model can't be mapped or the plan does not fit it.
    """
    structure = quantize_model_(model, plan, simulated=simulated)
    config = lora_config(plan, structure, dropout=lora_dropout)
    if config is None:
        return model
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 a deprecated question on every wrap; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
