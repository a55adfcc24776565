"""apply_plan: turn a model and a Plan into a quantised model with (LoRA-family) adapters.

Each linear of each block is quantised at its planned bits (a packed ``QuantLinear``, or a
dense "simulated" copy of the dequantised weight for fast search-time scoring) and gets a
PEFT adapter of its planned rank (LoRA, or a ``qradaptor.lora.AdapterVariant``: DoRA,
AdaLoRA, LoftQ-initialised); embedding and head are quantised only when the plan says so;
every other weight is frozen. Only this module changes a model for good
(sensitivity profiling swaps single blocks temporarily and puts them back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from qradaptor.lora import AdapterVariant, adalora_config, lora_config, prepare_adalora_
from qradaptor.models.structure import LinearInfo, ModelStructure, inspect_model
from qradaptor.plan import UNQUANTIZED, LayerSpec, Plan
from qradaptor.progress import progress_bar
from qradaptor.quant.modules import QuantEmbedding, QuantLinear, simulated_linear

if TYPE_CHECKING:
    from peft import PeftModel

    from qradaptor.quant.cache import QuantCache


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, module)


def _dense_weight(module: nn.Module, info: LinearInfo) -> torch.Tensor:
    """(out, in) weight of an nn.Linear or a GPT-2 Conv1D (stored (in, out))."""
    return module.weight.data if info.kind == "linear" else module.weight.data.t()


def _quantized_linear(
    module: nn.Module,
    info: LinearInfo,
    spec: LayerSpec,
    plan: Plan,
    simulated: bool,
    cache: QuantCache | None = None,
    path: str = "",
) -> nn.Module:
    weight = _dense_weight(module, info)
    bias = None if module.bias is None else module.bias.data
    method, bits, group_size, dq = plan.quant_method, spec.bits, plan.group_size_of(spec), plan.double_quant
    if cache is None:
        fitted = None
    else:
        fitted = cache.get(path, weight, bits, group_size, method, double_quant=dq)  # type: ignore[arg-type]
    if simulated:
        return simulated_linear(weight, bias, bits, group_size, method, fitted=fitted, double_quant=dq)  # type: ignore[arg-type]
    if fitted is None:
        return QuantLinear.from_weight(weight, bias, bits, group_size, method, double_quant=dq)  # type: ignore[arg-type]
    return QuantLinear(fitted.copy(), bias, weight.dtype)  # a copy: the model may change its codes (LoftQ)


def quantize_model_(
    model: nn.Module,
    plan: Plan,
    *,
    simulated: bool = False,
    cache: QuantCache | None = None,
    progress: bool = False,
) -> ModelStructure:
    """Quantises ``model`` in place as ``plan`` says; no adapters. Returns its structure.

    ``cache`` (one per set of base weights) supplies block linears fitted before, so a
    layer is fitted once per bit-width however many plans are built (the search's case).
    ``progress`` shows the weight fits (minutes for a large model on a CPU); see progress.py.

    Raises:
        ValueError: if the plan does not fit the model (see ``Plan.validate``).
    """
    structure = inspect_model(model)
    plan.validate(structure)
    infos = {info.name: info for info in structure.linears}
    fits = [(b, name, spec) for b, name, spec in plan.iter_modules(structure) if spec.bits != UNQUANTIZED]
    with progress_bar(total=len(fits), desc="fitting weights", unit="linear", enabled=progress) as bar:
        for block, name, spec in fits:
            path = structure.module_path(block, name)
            new = _quantized_linear(
                model.get_submodule(path), infos[name], spec, plan, simulated, cache, path
            )
            _set_module(model, path, new)
            bar.update()
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


def _loftq_weights(model: nn.Module, plan: Plan, structure: ModelStructure) -> dict[str, torch.Tensor]:
    """(out, in) dense weights of the modules LoftQ will initialise: quantised and adapted.

    References, not copies: quantisation replaces the modules but leaves these tensors alive.
    """
    infos = {info.name: info for info in structure.linears}
    weights = {}
    for block, name, spec in plan.iter_modules(structure):
        if spec.bits != UNQUANTIZED and spec.rank > 0:
            path = structure.module_path(block, name)
            weights[path] = _dense_weight(model.get_submodule(path), infos[name])
    return weights


def apply_plan(
    model: nn.Module,
    plan: Plan,
    *,
    simulated: bool = False,
    lora_dropout: float = 0.0,
    variant: AdapterVariant | None = None,
    cache: QuantCache | None = None,
    progress: bool = False,
) -> PeftModel | nn.Module:
    """Quantises ``model`` per ``plan`` and attaches adapters of the planned ranks.

    The model is changed in place (its linears are replaced); pass a copy to keep the
    original. Only the adapter parameters are trainable afterwards.

    Args:
        model: a causal LM (Llama/Qwen/Mistral-style or GPT-2-style).
        plan: the allocation; validated against the model first.
        simulated: store quantised weights densely (quantise then dequantise) instead of
            packed; same outputs, faster steps, no memory saving. For search-time scoring.
        lora_dropout: dropout on the adapter input.
        variant: the adapter (``AdapterVariant``); None is plain LoRA. "dora" is (Q)DoRA
            with the plan's ranks; "adalora" is AdaLoRA on the plan's adapted modules (the
            plan's ranks must be uniform; the ranks come from the variant; see
            ``qradaptor.lora.adalora_config`` for what the trainer must call); ``init="loftq"``
            refits each adapted quantised module's codes and adapter by LoftQ.
        cache: fitted block linears to reuse and extend (see ``quantize_model_``).
        progress: show the weight fits (see ``quantize_model_``).

    Returns:
        A ``peft.PeftModel`` when some rank is > 0, else the (frozen) quantised model.

    Raises:
        ValueError: if the model can't be mapped, the plan does not fit it, or the variant
            does not fit the plan (adalora on a non-uniform-rank plan).
    """
    variant = variant or AdapterVariant()
    structure = inspect_model(model)
    plan.validate(structure)  # before any change to the model, as is the config below
    if variant.kind == "adalora":
        config = adalora_config(plan, structure, variant, dropout=lora_dropout)
    else:
        config = lora_config(plan, structure, dropout=lora_dropout, use_dora=variant.kind == "dora")
    dense = _loftq_weights(model, plan, structure) if variant.init == "loftq" else {}
    quantize_model_(model, plan, simulated=simulated, cache=cache, progress=progress)
    if config is None:
        return model
    if variant.kind == "adalora":
        prepare_adalora_(model, sorted(config.target_modules))
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 a deprecated question on every wrap; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # prepare_adalora_'s adapter-less layers look to PEFT like an earlier wrap.
        warnings.filterwarnings("ignore", message=".*modify a model with PEFT for a second time.*")
        peft_model = get_peft_model(model, config)
    if dense:
        from qradaptor.loftq import apply_loftq_

        apply_loftq_(peft_model, dense, plan, iters=variant.loftq_iters)
    return peft_model


def enable_gradient_checkpointing(model: nn.Module, blocks: int | None = None) -> int:
    """Gradient checkpointing on the first ``blocks`` decoder layers (None: every one;
    non-reentrant), and their packed layers told to save their dequantised weight, which the
    checkpoint drops and recomputes for the backward (``quant.modules.keep_weights_for_recompute``:
    two dequantisations a step, not three). The other layers keep their activations: fewer
    recomputed blocks, less time, where the memory allows (``memory.training_memory``'s
    ``checkpoint_blocks``). Returns how many packed layers were told."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from qradaptor.quant.modules import keep_weights_for_recompute

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if blocks is not None:
        if not 1 <= blocks <= len(layers):
            raise ValueError(f"blocks must be 1..{len(layers)} (the model's decoder layers), got {blocks}")
        for layer in layers[blocks:]:
            layer.gradient_checkpointing = False
    return sum(keep_weights_for_recompute(layer) for layer in layers if layer.gradient_checkpointing)
