"""Modules whose frozen weight lives as packed k-bit codes: QuantLinear, QuantEmbedding.

No dense copy of the weight is kept: the forward dequantises it, uses it and drops it,
and the backward dequantises it again rather than saving it (a saved copy per layer would
give back all the memory that quantisation saved). Inside a gradient-checkpointed block
(``keep_weights_for_recompute``) the forward saves it after all: the checkpoint drops what a
block saves and recomputes it when the backward asks, so the backward gets the weight its
block's recomputation dequantised, and each step dequantises twice instead of three times, at
the cost of one block's dense weights during that block's backward (``memory.training_memory``).
Gradients flow to the input only; the codes are frozen. Compute runs in ``compute_dtype``
(float32 on CPU, bfloat16 on CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qradaptor.quant.metaquant import dequantize_meta
from qradaptor.quant.quantizer import QuantizedTensor, QuantMethod, dequantize_parts, quantize

COMPILE_ENV = "QRADAPTOR_COMPILE"
"""On CUDA: "0" dequantises eagerly, "compile" with torch.compile, default the Triton kernel."""


@functools.cache
def _compiled_dequantize() -> Callable[..., torch.Tensor]:
    import torch._dynamo

    # One specialisation per (bits, layer shape): a 30-block model with 4 shapes and 5
    # bit-widths needs about 20, above dynamo's default limit of 8.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(dequantize_parts, fullgraph=True, dynamic=False)


@functools.cache
def _triton_dequantize() -> Callable[..., torch.Tensor] | None:
    try:
        from qradaptor.quant.triton_dequant import dequantize_triton
    except ImportError:  # no Triton: fall back to torch.compile
        return None
    return dequantize_triton


def _dequantizer(device: torch.device) -> Callable[..., torch.Tensor]:
    """Eager on CPU; on CUDA one fused kernel (Triton, else torch.compile).

    Eager unpacking launches several kernels over bits x weights bytes each; fused, the
    dequantisation reads the packed codes once and writes the dense weight once.
    ``QRADAPTOR_COMPILE``: "0" eager, "compile" torch.compile, anything else the default.
    """
    if device.type != "cuda":
        return dequantize_parts
    mode = os.environ.get(COMPILE_ENV, "1")
    if mode == "0":
        return dequantize_parts
    if mode != "compile":
        kernel = _triton_dequantize()
        if kernel is not None:
            return kernel
    return _compiled_dequantize()


class _DequantLinear(torch.autograd.Function):
    """y = x W^T + b with W dequantised in forward and again in backward, or, in a
    checkpointed block, saved (the checkpoint recomputes it for the backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        weight = layer.dequantized_weight(x.dtype)
        if layer.checkpointed and ctx.needs_input_grad[0]:
            ctx.save_for_backward(weight)
        return F.linear(x, weight, layer.bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        saved = ctx.saved_tensors
        weight = saved[0] if saved else ctx.layer.dequantized_weight(grad_out.dtype)  # (out, in)
        return grad_out @ weight.to(grad_out.dtype), None


class QuantLinear(nn.Module):
    """A frozen linear layer stored as packed k-bit codes with per-group scale and zero.

    A symmetric fit has no zero: its ``zero`` buffer is None (not in the state dict).

    Attributes:
        in_features, out_features: as in ``nn.Linear``.
        bits, group_size: the quantisation of the weight.
        compute_dtype: dtype the weight is dequantised to (PEFT reads it for the adapters).
    """

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None, compute_dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = qt.shape
        self.bits = qt.bits
        self.group_size = qt.group_size
        self.compute_dtype = compute_dtype
        self.double_quant = qt.double_quant
        # Named `qweight` so PEFT finds the device (it looks for `weight`, then `qweight`).
        self.register_buffer("qweight", qt.packed)
        self.register_buffer("scale", qt.scale)
        self.register_buffer("zero", qt.zero)  # None when symmetric
        if qt.double_quant:  # scale and zero hold 8-bit codes; these their blocks' (step, offset)
            self.register_buffer("scale_meta", qt.scale_meta)
            self.register_buffer("zero_meta", qt.zero_meta)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.checkpointed = False
        """Set by ``keep_weights_for_recompute`` on layers in gradient-checkpointed blocks."""
        self.dense: torch.Tensor | None = None
        """The dequantised weight, held by ``dequantised_once`` for a run without gradients."""

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        bits: int,
        group_size: int = 64,
        method: QuantMethod = "hqq",
        compute_dtype: torch.dtype | None = None,
        *,
        double_quant: bool = False,
    ) -> QuantLinear:
        """Quantises a (out_features, in_features) weight into a new QuantLinear."""
        qt = quantize(weight, bits, group_size, method, double_quant=double_quant)
        return cls(qt, bias, compute_dtype or weight.dtype)

    def quantized(self) -> QuantizedTensor:
        """The stored weight as a QuantizedTensor (shares storage)."""
        meta = (self.scale_meta, self.zero_meta) if self.double_quant else ()
        return QuantizedTensor(
            self.qweight,
            self.scale,
            self.zero,
            (self.out_features, self.in_features),
            self.bits,
            self.group_size,
            *meta,
        )

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(out_features, in_features) dense weight, freshly dequantised."""
        # Inside a torch.compile'd step the compiler fuses the eager ops into one kernel
        # itself (as _compiled_dequantize does); tracing into our Triton launcher and its
        # environment switch would only risk a graph break in every layer.
        dequantize = dequantize_parts if torch.compiler.is_compiling() else _dequantizer(self.qweight.device)
        if self.double_quant:  # the float16 metadata first: a few values per group, cheap
            scale, zero = (
                dequantize_meta(self.scale, self.scale_meta),
                dequantize_meta(self.zero, self.zero_meta),
            )
        else:
            scale, zero = self.scale, self.zero
        return dequantize(
            self.qweight,
            scale,
            zero,
            self.bits,
            self.in_features,
            self.group_size,
            dtype or self.compute_dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None and not torch.is_grad_enabled():  # the same values, once
            return F.linear(x.to(self.compute_dtype), self.dense, self.bias)
        return _DequantLinear.apply(x.to(self.compute_dtype), self)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, double_quant={self.double_quant}, bias={self.bias is not None}"
        )


class QuantEmbedding(nn.Module):
    """A frozen embedding table stored as packed k-bit codes.

    Rows are packed independently, so a lookup gathers and dequantises only the rows it
    needs. ``as_linear`` gives a QuantLinear over the same buffers, for a tied LM head.
    """

    def __init__(self, qt: QuantizedTensor, compute_dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__()
        if qt.double_quant:
            # A lookup gathers rows of scales and zeros; 8-bit codes would need their blocks too.
            raise ValueError("QuantEmbedding takes float16 scales and zeros, got a double-quantised table")
        self.num_embeddings, self.embedding_dim = qt.shape
        self.bits = qt.bits
        self.group_size = qt.group_size
        self.compute_dtype = compute_dtype
        self.padding_idx = padding_idx
        self.register_buffer("qweight", qt.packed)
        self.register_buffer("scale", qt.scale)
        self.register_buffer("zero", qt.zero)  # None when symmetric

    @classmethod
    def from_embedding(
        cls, embedding: nn.Embedding, bits: int, group_size: int = 64, method: QuantMethod = "hqq"
    ) -> QuantEmbedding:
        """Quantises an ``nn.Embedding``'s table into a new QuantEmbedding."""
        qt = quantize(embedding.weight, bits, group_size, method)
        return cls(qt, embedding.weight.dtype, embedding.padding_idx)

    def quantized(self) -> QuantizedTensor:
        """The stored table as a QuantizedTensor (shares storage)."""
        return QuantizedTensor(
            self.qweight,
            self.scale,
            self.zero,
            (self.num_embeddings, self.embedding_dim),
            self.bits,
            self.group_size,
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # (..., row_bytes), (..., groups) gathered rows -> (..., embedding_dim)
        return dequantize_parts(
            self.qweight[ids],
            self.scale[ids],
            None if self.zero is None else self.zero[ids],
            self.bits,
            self.embedding_dim,
            self.group_size,
            self.compute_dtype,
        )

    def as_linear(self) -> QuantLinear:
        """A QuantLinear sharing this table's buffers (a tied output head)."""
        return QuantLinear(self.quantized(), None, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}"


def simulated_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    group_size: int = 64,
    method: QuantMethod = "hqq",
    *,
    fitted: QuantizedTensor | None = None,
    double_quant: bool = False,
) -> nn.Linear:
    """A dense ``nn.Linear`` holding the quantise-then-dequantise weight.

    Faster than QuantLinear (no unpacking per step) at the cost of dense storage: the
    search uses it to score candidates; its outputs equal QuantLinear's. ``fitted`` is the
    weight's fit at ``bits`` when already known (a ``QuantCache`` entry): no fit then.
    """
    qt = quantize(weight, bits, group_size, method, double_quant=double_quant) if fitted is None else fitted
    layer = QuantLinear(qt, bias, weight.dtype)
    out_features, in_features = weight.shape
    # skip_init: the weight is overwritten at once, so its random init would be wasted work.
    dense = torch.nn.utils.skip_init(
        nn.Linear, in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        dense.weight.copy_(layer.dequantized_weight(weight.dtype))
        if bias is not None:
            dense.bias.copy_(bias)
    dense.requires_grad_(False)
    return dense


def keep_weights_for_recompute(blocks: nn.Module, on: bool = True) -> int:
    """Marks every QuantLinear under ``blocks`` (the gradient-checkpointed decoder layers) to
    save its dequantised weight for the backward, where the checkpoint recomputes it: two
    dequantisations a step instead of three. Only for checkpointed blocks: elsewhere the saved
    weight would stay alive from the forward to the backward. Returns how many were marked."""
    layers = [m for m in blocks.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        layer.checkpointed = on
    return len(layers)


def dense_bytes(model: nn.Module) -> int:
    """Bytes the QuantLinear layers of ``model`` take dequantised in their compute dtype."""
    return sum(
        m.out_features * m.in_features * m.compute_dtype.itemsize
        for m in model.modules()
        if isinstance(m, QuantLinear)
    )


@contextlib.contextmanager
def dequantised_once(model: nn.Module) -> Iterator[int]:
    """Every QuantLinear of ``model`` dequantised once and held (``dense_bytes`` more memory)
    for what runs inside without gradients, an evaluation: each forward then skips its
    dequantisations and computes the same values (the weight the layer would dequantise, in
    the same dtype). Gradients still go through the packed path. Yields the bytes held."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.dense = layer.dequantized_weight()
        yield sum(layer.dense.numel() * layer.dense.element_size() for layer in layers)
    finally:
        for layer in layers:
            layer.dense = None
