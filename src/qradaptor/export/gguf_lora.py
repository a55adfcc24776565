"""A run's LoRA adapter as a GGUF LoRA adapter, which llama.cpp applies at run time (``--lora``).

llama.cpp's adapter file (``llama-adapter.cpp``): ``general.type = "adapter"``,
``adapter.type = "lora"``, ``adapter.lora.alpha``, the model's architecture, and for each
adapted weight ``NAME.lora_a`` of shape (rank, in) and ``NAME.lora_b`` of shape (out, rank)
(numpy order; PEFT's ``lora_A.weight`` and ``lora_B.weight``). llama.cpp adds
``(alpha / rank) * B @ A @ x`` with the rank read off each tensor, as our plans scale an
adapter of rank r by alpha / r with one alpha (Eq. 4). Where PEFT's scale for a layer differs
from alpha / r (rsLoRA, an alpha pattern), B is multiplied by the ratio so the product stays
the same. The rows of B of a q or k projection are put in llama.cpp's order, as the base's are.
DoRA and AdaLoRA have no llama.cpp form and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LoraWeight:
    """One adapted linear: ``delta W = scale * B @ A``."""

    a: torch.Tensor
    """(rank, in) float32."""
    b: torch.Tensor
    """(out, rank) float32."""
    scale: float
    """PEFT's scaling of this layer (alpha / rank for plain LoRA)."""


def check_lora_adapter(adapter_dir: str) -> None:
    """Raises ValueError unless the saved adapter is plain LoRA (llama.cpp has no DoRA/AdaLoRA)."""
    from qradaptor.assemble import read_adapter

    info = read_adapter(adapter_dir)
    if info.peft_type != "LORA" or info.use_dora:
        kind = "DoRA" if info.use_dora else info.peft_type
        raise ValueError(
            f"adapter {adapter_dir!r} is {kind}, which llama.cpp cannot apply at run time; "
            "export it with --adapter merged"
        )


def lora_weights(peft_model: Any, adapter_dir: str) -> dict[str, LoraWeight]:
    """Unwrapped module path -> its LoRA weights, from a PEFT model with a loaded adapter.

    Raises:
        ValueError: for an AdaLoRA or DoRA adapter (llama.cpp applies plain LoRA only).
    """
    from peft.tuners.lora import LoraLayer

    from qradaptor.packed import unwrapped_path

    check_lora_adapter(adapter_dir)
    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach().float()
            b = module.lora_B["default"].weight.detach().float()
            out[unwrapped_path(name)] = LoraWeight(a, b, float(module.scaling["default"]))
    return out


def lora_arrays(weight: LoraWeight, alpha: float, rows: Any = None) -> tuple[Any, Any]:
    """(A, B) float32 arrays to write, B rescaled so that (alpha / rank) B A = scale B A.

    Args:
        weight: the layer's LoRA weights.
        alpha: the ``adapter.lora.alpha`` written.
        rows: a function putting B's rows in llama.cpp's order (q and k), or None.
    """
    rank = weight.a.shape[0]
    ratio = weight.scale / (alpha / rank)
    b = weight.b if ratio == 1.0 else weight.b * ratio
    b = b if rows is None else rows(b)
    return weight.a.contiguous().numpy(), b.contiguous().numpy()


def write_lora_gguf(
    path: str | Path, architecture: str, alpha: float, tensors: dict[str, tuple[Any, Any]]
) -> None:
    """Writes GGUF name -> (A, B) as a llama.cpp LoRA adapter file at ``path``."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for name, (a, b) in tensors.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
