"""A gradient probe: how strongly each block's LoRA adapters are pulled at the start of training.

For the rank-gradient baseline (``qradaptor.baselines``). On a copy of the model with a
uniform plan (every block at ``bits``, adapters of rank ``rank``, PEFT's initialisation:
A random, B = 0), the probe sums the gradients of the language-modelling loss over
``steps`` batches without any optimizer step, and reports per block l

    g_l = || (1 / S) sum_{s=1..S} grad_{theta_l} L(x_s) ||_2,

where theta_l are all the LoRA parameters (every A and B) of block l's linears and the
norm is taken over them together (their per-tensor norms summed in quadrature). With B = 0
the gradients of A are zero, so g_l is in effect the gradient norm of the B matrices: the
first-step pull on block l's adapters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.models.structure import ModelStructure


def _check_batches(batches: Sequence[torch.Tensor]) -> None:
    import torch

    if len(batches) == 0:
        raise ValueError("batches must hold at least one (B, T) tensor of token ids, got none")
    for i, ids in enumerate(batches):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            what = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"batches[{i}] must be a (B, T) torch.long tensor of token ids, got {what}")


def gradient_norms(
    model: nn.Module,
    structure: ModelStructure,
    batches: Sequence[torch.Tensor],
    *,
    bits: int = 16,
    rank: int = 16,
    steps: int = 4,
    seed: int = 0,
) -> list[float]:
    """Per-block norm of the mean LoRA gradient over ``steps`` batches (module docstring).

    The caller's model is not changed (the probe runs on a deep copy) and the caller's
    random state is not touched (``torch.random.fork_rng``); the same inputs and seed give
    the same norms.

    Args:
        model: a causal LM whose structure is ``structure``.
        structure: the model's structure (``inspect_model(model)``).
        batches: (B, T) torch.long token ids; labels are the ids themselves. Step s uses
            ``batches[s % len(batches)]``.
        bits: bits of every block during the probe (16 = unquantised; 1..8 quantise,
            simulated, with the plan's default group size).
        rank: LoRA rank of every adapter, >= 1.
        steps: forward/backward passes, >= 1.
        seed: seed of the adapters' initialisation.

    Returns:
        One float >= 0 per block.

    Raises:
        ValueError: if the batches are not (B, T) long tensors, ``rank`` or ``steps`` is
            below 1, ``bits`` is invalid, or the plan does not fit the model.
    """
    import torch

    from qradaptor.build import apply_plan
    from qradaptor.plan import Plan

    _check_batches(batches)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    plan = Plan.uniform(
        structure.num_blocks, bits, rank, model_signature=structure.signature, name="gradient-probe"
    )
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # the adapters' A draws
        probe = apply_plan(copy.deepcopy(model), plan, simulated=True)
        probe.eval()  # no dropout: a deterministic sensitivity, not a training step
        for step in range(steps):
            ids = batches[step % len(batches)].to(device)  # (B, T)
            loss = probe(input_ids=ids, labels=ids).loss
            (loss / steps).backward()  # accumulates the mean gradient in .grad
    base = probe.get_base_model() if hasattr(probe, "get_base_model") else probe
    norms: list[float] = []
    for block in range(structure.num_blocks):
        module = base.get_submodule(f"{structure.blocks_path}.{block}")
        squares = [
            float(p.grad.double().pow(2).sum())
            for p in module.parameters()
            if p.requires_grad and p.grad is not None
        ]
        norms.append(math.sqrt(sum(squares)))
    return norms
