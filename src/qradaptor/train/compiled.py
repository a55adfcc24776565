"""The forward passes of a training step and of an evaluation, eager or compiled (``TrainConfig.compile``).

A small model's step is bound by kernel launches, not arithmetic: SmolLM2-135M with LoRA on
every linear launches thousands of small kernels per step and keeps an H100 a few percent
busy (docs/TRAINING.md). torch.compile offers two remedies:

    "default"  the forward + loss and its backward fused into fewer, larger kernels (inductor)
    "graphs"   the same kernels recorded once as CUDA graphs and replayed: one launch per
               graph instead of one per kernel (mode="reduce-overhead"; CUDA only)

A compiled graph is specialised to its input shapes, so every micro-batch is padded to one
shape and one graph serves every step (no recompiles):

    (b, t) -> (rows, width)    rows = batch_size, width = the set's longest example (<= seq_len)
    padded columns             input_ids pad_id, attention_mask 0, labels -100
    padded rows                input_ids pad_id, attention_mask 1, labels -100

The loss is a mean over label tokens, which padding leaves alone, so a padded batch trains as
the unpadded one (up to float rounding). Compiled are ``forward_loss`` (the differentiable
part of a step, with its backward) and ``loss_sums`` (the held-out forward, padded the same
way). AdamW, clipping and AdaLoRA's allocation stay eager: a few foreach kernels over the
adapters, after the one host sync of a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.train.data import TokenizedSet

CompileMode = Literal["off", "default", "graphs"]
COMPILE_MODES: tuple[str, ...] = ("off", "default", "graphs")

_BACKEND: Any = "inductor"
"""torch.compile's backend. Tests put a counting ``aot_eager`` here: inductor generates and
builds C++ on CPU, about a minute even for a tiny model."""


def check_compile(mode: str, device: str | None = None) -> None:
    """Checks that ``mode`` is a compile mode, and one that runs on ``device`` when given.

    Args:
        mode: "off", "default" or "graphs".
        device: "cpu", "cuda", "cuda:1", ...; None checks the mode alone.

    Raises:
        ValueError: on an unknown mode, or "graphs" on a device other than CUDA.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(
            "compile must be one of 'off' (eager), 'default' (torch.compile) or 'graphs' "
            f"(torch.compile with CUDA graphs), got {mode!r}"
        )
    if mode == "graphs" and device is not None and not device.startswith("cuda"):
        raise ValueError(
            f"compile 'graphs' records CUDA graphs and needs a CUDA device, got device {device!r}; "
            "use compile 'default' (torch.compile) or 'off' there"
        )


def static_batch(
    batch: dict[str, torch.Tensor], rows: int, width: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """``batch`` (input_ids, labels, attention_mask, each (b, t)) padded to (rows, width).

    Padded columns are masked out. A padded row attends to its own pad tokens instead of to
    nothing: a fully masked row is a softmax over no keys, which attention kernels each
    treat their own way (some give NaN, and 0 x NaN in the backward would poison every
    gradient). Attended, it is an ordinary finite row, and with no labels its gradient is 0.

    Raises:
        ValueError: if the batch is larger than (rows, width).
    """
    import torch

    b, t = batch["input_ids"].shape
    if b > rows or t > width:
        raise ValueError(f"a batch of shape ({b}, {t}) does not fit the static shape ({rows}, {width})")
    if (b, t) == (rows, width):
        return batch
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
    out = {}
    for key, value in batch.items():
        padded = torch.full((rows, width), fill[key], dtype=value.dtype)  # (rows, width)
        padded[:b, :t] = value
        out[key] = padded
    out["attention_mask"][b:] = 1
    return out


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The differentiable part of a training step: the mean loss over the batch's label tokens.

    ``use_cache=False``: no key/value cache is built; training never reads it.
    """
    return model(**batch, use_cache=False).loss


def loss_sums(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token loss, label tokens) of a held-out batch; the caller divides.

    The loss comes from the logits, not the model's own ``loss``: AdaLoRA adds its
    orthogonality penalty to that one, in eval mode too.
    """
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return total, (targets != -100).sum()


def heldout_loss(
    model: nn.Module,
    data: TokenizedSet,
    batch_size: int,
    *,
    sums: Callable[..., tuple[torch.Tensor, torch.Tensor]] = loss_sums,
    static: bool = False,
) -> float:
    """Token-weighted mean loss on the label tokens of ``data`` (inf if not finite).

    Args:
        model: the model to score (put in eval mode for the call).
        data: held-out examples.
        batch_size: examples per forward.
        sums: ``loss_sums`` or a compiled copy of it.
        static: pad every batch to (batch_size, the longest example), as a compiled ``sums`` needs.
    """
    import torch

    device = next(p.device for p in model.parameters())
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    width = data.longest() if static else 0
    with torch.inference_mode():
        for batch in data.sequential(batch_size):
            if static:
                batch = static_batch(batch, batch_size, width, data.pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss_sum, tokens = sums(model, batch)
            total += float(loss_sum)
            count += int(tokens)
    model.train(was_training)
    value = total / max(count, 1)
    return value if math.isfinite(value) else math.inf


def compile_step(fn: Callable[..., Any], mode: CompileMode) -> Callable[..., Any]:
    """``fn`` itself for "off", else ``fn`` compiled for static shapes in ``mode``.

    The first call compiles (2 to 5 minutes for SmolLM2's 30 blocks on an H100); "graphs"
    then warms up and records in the next two calls. Later calls with the same shapes
    replay what was compiled.
    """
    if mode == "off":
        return fn
    import torch

    if mode == "default":
        return torch.compile(fn, backend=_BACKEND, dynamic=False)
    graphed = torch.compile(fn, backend=_BACKEND, mode="reduce-overhead", dynamic=False)

    def replay(*args: Any) -> Any:
        # Each call starts a new step: the graphs may then reuse the memory of the previous
        # call's outputs, which the loop has already read or copied (loss.detach() into a sum).
        torch.compiler.cudagraph_mark_step_begin()
        return graphed(*args)

    return replay


def keep_grads_(params: Iterable[torch.Tensor]) -> None:
    """Gives every parameter without one a zeroed ``.grad`` of its own memory, in place.

    A CUDA-graphed backward writes the gradients into graph memory that its next replay
    overwrites. Autograd adopts that memory as ``.grad`` when ``.grad`` is None; when a
    ``.grad`` is already there it adds into it instead, so gradients survive accumulation
    over micro-batches. Clear them with ``zero_grad(set_to_none=False)`` to keep them.
    """
    import torch

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
