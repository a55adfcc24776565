"""What a training run carries across a resume: its measurements, trainable tensors, RNG states.

``TrainResult`` is what a run measured (and what a checkpoint restores of it); the other
helpers read and restore the state a checkpoint needs besides the optimiser's: the trainable
tensors, AdaLoRA's rank-allocator statistics and the CPU/CUDA RNG states (for dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

WARMUP_STEPS = 10
"""Steps left out of the steady throughput: the first ones compile kernels and fill caches."""


@dataclass
class TrainResult:
    """What a finished run measured."""

    losses: list[float] = field(default_factory=list)
    """Training loss of every step (including those before a resume)."""
    evals: list[tuple[int, float]] = field(default_factory=list)
    """(step, held-out loss) at each evaluation."""
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of every step (the first ones include CUDA/Triton warm-up)."""
    step_tokens: list[int] = field(default_factory=list)
    """Non-padding input tokens of every step."""
    peak_memory: int | None = None
    """Peak CUDA bytes allocated during this process's steps; None on CPU."""
    resumed_from: int | None = None
    """The step of the checkpoint this run continued from."""
    skipped_steps: list[int] = field(default_factory=list)
    """Steps (1-based) not applied because their gradient was not finite."""

    @property
    def steps(self) -> int:
        """Optimiser steps taken in total."""
        return len(self.losses)

    @property
    def tokens(self) -> int:
        """Non-padding input tokens trained on."""
        return sum(self.step_tokens)

    @property
    def train_seconds(self) -> float:
        """Wall time inside training steps (evaluation and saving excluded)."""
        return sum(self.step_seconds)

    @property
    def tokens_per_second(self) -> float:
        """Training throughput in input tokens per second, every step counted."""
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def steady_tokens_per_second(self, skip: int = WARMUP_STEPS) -> float:
        """Throughput after the first ``skip`` steps (kernel compilation and caches warming up)."""
        seconds = sum(self.step_seconds[skip:])
        return sum(self.step_tokens[skip:]) / seconds if seconds > 0 else self.tokens_per_second


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter by name (what a checkpoint saves and a resume restores)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def rank_allocator(model: nn.Module) -> Any:
    """AdaLoRA's rank allocator, or None for other methods."""
    return getattr(getattr(model, "base_model", None), "rankallocator", None)


def allocator_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """AdaLoRA's importance statistics as named tensors for a checkpoint (empty for other methods)."""
    allocator = rank_allocator(model)
    if allocator is None:
        return {}
    out = {}
    for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        for name, value in getattr(allocator, kind).items():
            out[f"rankallocator.{kind}.{name}"] = value
    return out


def restore_allocator_(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Puts ``allocator_tensors``' statistics back into AdaLoRA's allocator, on the model's device."""
    allocator = rank_allocator(model)
    if allocator is None:
        return
    for key, value in tensors.items():
        if key.startswith("rankallocator."):
            _, kind, name = key.split(".", 2)
            getattr(allocator, kind)[name] = value.to(next(model.parameters()).device)


def rng_state() -> dict[str, Any]:
    """The CPU and (where present) CUDA RNG states, so dropout resumes where it was."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state_(state: dict[str, Any]) -> None:
    """Restores what ``rng_state`` saved."""
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
