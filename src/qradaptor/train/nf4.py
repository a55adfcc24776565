"""QLoRA's reference base: every block linear as a bitsandbytes NF4 ``Linear4bit`` (CUDA only).

This is the field's implementation (Dettmers et al., 2023) that our own 4-bit quantiser is
compared with: NF4 codes in blocks of 64, bf16 compute, embedding and head 16-bit as in QLoRA.
Two methods use it:
    qlora-nf4       with double quantisation (QLoRA's setting, transformers'
                    ``bnb_4bit_use_double_quant=True``, bitsandbytes' ``compress_statistics``):
                    each block's absmax as an 8-bit code, about 4.127 bits per weight
    qlora-nf4-nodq  without: an fp32 absmax per block, 4.5 bits per weight (the same storage
                    as our 4-bit groups of 64 with a 16-bit scale and zero)
``memory.nf4_nbytes`` counts both exactly. PEFT wraps ``Linear4bit`` itself, so the adapter
is an ordinary PEFT LoRA adapter.

Runs made before the two were told apart (method ``qlora-nf4``, e.g. docs/results/paper) built
``Params4bit`` without ``compress_statistics``, whose default in bitsandbytes is True: they
were double-quantised too, as ``qlora-nf4`` is now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qradaptor.memory import NF4_BLOCK

if TYPE_CHECKING:
    from torch import nn

    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan


def check_nf4_available(device: str, method: str = "qlora-nf4") -> None:
    """Raises ValueError unless bitsandbytes is importable and ``device`` is CUDA."""
    if not str(device).startswith("cuda"):
        raise ValueError(
            f"method {method} needs bitsandbytes on a CUDA GPU, but the device is {device!r}; "
            "use --method qlora (our 4-bit quantiser, runs on CPU too)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"method {method} needs the bitsandbytes package (pip install bitsandbytes), which is not "
            f"installed ({err}); use --method qlora (our 4-bit quantiser) instead"
        ) from err


def nf4_quantize_(model: nn.Module, plan: Plan, *, double_quant: bool = True) -> ModelStructure:
    """Replaces every quantised block linear of ``model`` (on CUDA) by a bitsandbytes NF4 layer.

    Args:
        model: the dense model, on the CUDA device (the codes are made on the move there).
        plan: which block linears are quantised (all at 4 bits).
        double_quant: quantise each block's absmax to 8 bits (QLoRA's double quantisation).

    Raises:
        ValueError: if a planned module is not at 4 bits or the plan quantises embedding/head.
    """
    import bitsandbytes as bnb
    import torch

    from qradaptor.build import _set_module
    from qradaptor.models.structure import inspect_model
    from qradaptor.plan import UNQUANTIZED

    structure = inspect_model(model)
    plan.validate(structure)
    if plan.embed_bits != UNQUANTIZED or plan.head_bits != UNQUANTIZED:
        raise ValueError("bitsandbytes NF4 keeps embeddings and head at 16 bits; the plan quantises them")
    for block, name, spec in plan.iter_modules(structure):
        if spec.bits == UNQUANTIZED:
            continue
        if spec.bits != 4:
            raise ValueError(
                f"bitsandbytes NF4 quantises to 4 bits only, the plan puts {block}.{name} at {spec.bits}"
            )
        path = structure.module_path(block, name)
        dense = model.get_submodule(path)
        layer = bnb.nn.Linear4bit(
            dense.in_features,
            dense.out_features,
            bias=dense.bias is not None,
            compute_dtype=dense.weight.dtype,
            compress_statistics=double_quant,
            quant_type="nf4",
            device="cpu",
        )
        # compress_statistics is passed explicitly: Params4bit's default is True (double quant).
        layer.weight = bnb.nn.Params4bit(
            dense.weight.data.cpu(),
            requires_grad=False,
            blocksize=NF4_BLOCK,
            compress_statistics=double_quant,
            quant_type="nf4",
        )
        if dense.bias is not None:
            layer.bias = torch.nn.Parameter(dense.bias.data.cpu(), requires_grad=False)
        _set_module(model, path, layer.to(dense.weight.device))  # quantised on the move to CUDA
    model.requires_grad_(False)
    return structure


def nf4_model_(
    model: nn.Module, plan: Plan, *, lora_dropout: float = 0.0, double_quant: bool = True
) -> nn.Module:
    """``nf4_quantize_`` then PEFT LoRA of the plan's ranks (PEFT wraps ``Linear4bit`` itself).

    Returns:
        The PEFT-wrapped model (the quantised model when every rank is 0).
    """
    from qradaptor.lora import lora_config

    structure = nf4_quantize_(model, plan, double_quant=double_quant)
    config = lora_config(plan, structure, dropout=lora_dropout)
    if config is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, config)
