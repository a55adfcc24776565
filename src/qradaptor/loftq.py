"""LoftQ: quantise and initialise the adapter together, so that Q + s B A starts close to W.

LoftQ (Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization", Alg. 1) for our
group-wise quantiser at any bits 1..8. Notation, one linear:

    W        (out, in) dense weight
    Q_t      its k-bit codes at step t; dequant(Q_t) the weight they stand for
    B, A     (out, r), (r, in) LoRA factors; s = alpha / r the LoRA scaling

    B_0 A_0 = 0
    for t = 1..T:
        Q_t        = quantize(W - s B_{t-1} A_{t-1})
        U S V^T    = SVD(W - dequant(Q_t))
        B_t, A_t   = U_r sqrt(S_r) / sqrt(s),  sqrt(S_r) V_r^T / sqrt(s)   (so s B_t A_t = rank-r part)

One deviation from Alg. 1: we return the iterate with the lowest ||W - dequant(Q_t) - s B_t A_t||_F
rather than the last. Our quantiser is not a projection, so a step can make the fit worse;
keeping the best makes T + 1 steps never worse than T (the iterates of T are a prefix of
those of T + 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from qradaptor.quant.quantizer import QuantizedTensor, QuantMethod, dequantize, quantize

if TYPE_CHECKING:
    from peft import PeftModel

    from qradaptor.plan import Plan


def low_rank_split(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors of ``matrix`` (Eckart-Young), balanced between the two.

    Returns:
        (B, A) with B = U_r sqrt(S_r) of shape (rows, r) and A = sqrt(S_r) V_r^T of shape
        (r, cols); B @ A is the rank-r truncated SVD of ``matrix``.
    """
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)  # (m, k), (k,), (k, n)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _check(weight: torch.Tensor, rank: int, scaling: float, iters: int) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(weight.shape):
        raise ValueError(f"rank must be an integer in 1..{min(weight.shape)}, got {rank!r}")
    if isinstance(scaling, bool) or not isinstance(scaling, int | float) or not scaling > 0:
        raise ValueError(f"scaling must be a positive number, got {scaling!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")


@torch.no_grad()
def loftq_decompose(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    method: QuantMethod,
    rank: int,
    scaling: float,
    iters: int = 1,
    *,
    double_quant: bool = False,
) -> tuple[QuantizedTensor, torch.Tensor, torch.Tensor]:
    """LoftQ's alternating quantisation and low-rank fit of one weight (Alg. 1).

    Args:
        weight: (out, in) dense weight W.
        bits, group_size, method, double_quant: the quantisation, as in ``quantize``.
        rank: the adapter rank r.
        scaling: the LoRA scaling s (alpha / r) the adapter will be applied with.
        iters: alternating steps T (>= 1).

    Returns:
        (Q, lora_A, lora_B): the codes, A of shape (r, in) and B of shape (out, r), float32,
        with W ~ dequant(Q) + scaling * B @ A.

    Raises:
        ValueError: on a bad ``rank``, ``scaling``, ``iters`` or weight shape, or (from
            ``quantize``) a bad ``bits``, ``group_size`` or ``method``.
    """
    _check(weight, rank, scaling, iters)
    w = weight.detach().float()  # (out, in)
    low_rank = torch.zeros_like(w)  # s B A, (out, in)
    best: tuple[float, QuantizedTensor, torch.Tensor, torch.Tensor] | None = None
    for _ in range(iters):
        qt = quantize(w - low_rank, bits, group_size, method, double_quant=double_quant)
        residual = w - dequantize(qt)
        b, a = low_rank_split(residual, rank)  # (out, r), (r, in)
        low_rank = b @ a
        err = float(torch.linalg.norm(residual - low_rank))
        if best is None or err < best[0]:
            best = (err, qt, a, b)
    assert best is not None
    _, qt, a, b = best
    root = math.sqrt(scaling)  # split 1/s evenly so A and B keep comparable norms
    return qt, a / root, b / root


@torch.no_grad()
def apply_loftq_(
    peft_model: PeftModel,
    dense_weights: Mapping[str, torch.Tensor],
    plan: Plan,
    iters: int = 1,
    *,
    adapter_name: str = "default",
) -> None:
    """Refits each module in ``dense_weights`` by LoftQ, in place: its codes and its adapter.

    A packed base (``QuantLinear``) gets new codes, scales and zeros in its existing buffers;
    a simulated dense base (``nn.Linear``) gets the new dequantised weight. lora_A and lora_B
    are set so that base + scaling * B A ~ W; a DoRA magnitude is reset to the column norms
    of that sum, so the model's output does not jump.

    Args:
        peft_model: a model from ``apply_plan`` (LoRA or DoRA adapters).
        dense_weights: module path (e.g. "model.layers.0.mlp.up_proj") -> its (out, in)
            weight before quantisation.
        plan: the plan the model was built with (bits, group size, method).
        iters: LoftQ steps T.
        adapter_name: the adapter to initialise.

    Raises:
        ValueError: if a path names no LoRA layer with that adapter, or a module the plan
            leaves unquantised.
    """
    from peft.tuners.lora.layer import LoraLayer

    from qradaptor.models.structure import inspect_model
    from qradaptor.plan import UNQUANTIZED
    from qradaptor.quant.modules import QuantLinear

    inner = peft_model.base_model.model
    structure = inspect_model(inner)
    specs = {structure.module_path(b, n): spec for b, n, spec in plan.iter_modules(structure)}
    bits = {path: spec.bits for path, spec in specs.items()}
    for path, weight in dense_weights.items():
        layer = inner.get_submodule(path)
        if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
            raise ValueError(
                f"dense_weights: {path!r} must name a LoRA layer with adapter {adapter_name!r}, "
                f"got {type(layer).__name__}"
            )
        if bits.get(path, UNQUANTIZED) == UNQUANTIZED:
            raise ValueError(f"dense_weights: LoftQ needs a quantised module, {path!r} is 16-bit in the plan")
        scaling = layer.scaling[adapter_name]
        qt, a, b = loftq_decompose(
            weight,
            bits[path],
            plan.group_size_of(specs[path]),
            plan.quant_method,  # type: ignore[arg-type]
            layer.r[adapter_name],
            scaling,
            iters,
            double_quant=plan.double_quant,
        )
        base = layer.get_base_layer()
        if isinstance(base, QuantLinear):
            for stored, fitted in zip(base.quantized().parts(), qt.parts(), strict=True):
                stored.copy_(fitted)
        else:
            base.weight.copy_(dequantize(qt, base.weight.dtype))
        lora_a, lora_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
        lora_a.copy_(a)
        lora_b.copy_(b)
        if adapter_name in layer.lora_magnitude_vector:
            # DoRA: m = ||W_q + s B A||_c, as DoRA's own init computes it.
            magnitude = layer.lora_magnitude_vector[adapter_name].weight
            dense = dequantize(qt).to(lora_a.device) + scaling * (lora_b.float() @ lora_a.float())
            magnitude.copy_(torch.linalg.norm(dense, dim=1))
