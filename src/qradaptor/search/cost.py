"""What a search will do and about how long it will take here, said before it starts.

The work is counted in two units whose cost is measured on the machine, not assumed:
window forwards (one window of ``seq_len`` tokens through the full-precision model; a proxy
step is counted as three, forward plus backward) and weight fits (one linear quantised at
one bit-width, priced per weight). Fits happen once per (linear, bits) for a whole search
(profiling and every plan share them through the quantisation cache).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from qradaptor.search.definition import SearchConfig
from qradaptor.search.proxy import ProxyConfig

TRAIN_STEP_FORWARDS = 3
"""A training step's cost in forwards: the forward and a backward of about twice its cost."""


@dataclass(frozen=True)
class SearchWork:
    """What a search does, in plans and in measurable units."""

    summary: str
    """The plans per stage, in words."""
    window_forwards: int
    """Window forwards in all (proxy steps count TRAIN_STEP_FORWARDS each)."""
    fitted_weights: int
    """Weights quantised in all: every linear at every bit-width of the space."""


def search_work(
    config: SearchConfig,
    proxy: ProxyConfig,
    *,
    num_blocks: int,
    block_weights: int,
    calibration_windows: int,
    profile: bool,
    modules: int = 0,
) -> SearchWork:
    """Counts a search's work (see the module docstring) before any of it runs.

    Args:
        config: The search.
        proxy: The top-rung proxy (steps, batch size, held-out batches).
        num_blocks: Transformer blocks of the model.
        block_weights: Weights of one block's linears.
        calibration_windows: Windows the profile runs on.
        profile: Whether the search profiles (no profile given, none skipped).
        modules: Linears of a block when the profile is per module (``profile_granularity``):
            a row per (block, module), so ``modules`` times the per-block profile's forwards.
    """
    quantised = [b for b in config.bits if b != 16]
    eval_windows = proxy.eval_batches * proxy.batch_size

    def proxy_windows(steps: int) -> int:
        return steps * proxy.batch_size * TRAIN_STEP_FORWARDS + eval_windows

    forwards = 0
    parts = []
    if profile:
        forwards += calibration_windows * (1 + num_blocks * max(modules, 1) * len(quantised))
        rows = f"{num_blocks} blocks x {modules} modules" if modules else f"{num_blocks} blocks"
        why = f" (per module: {modules}x the forwards of a per-block profile)" if modules else ""
        parts.append(f"profile {rows} x {len(quantised)} bit-widths{why}")
    if config.references:
        forwards += len(config.bits) * proxy_windows(proxy.steps)
        parts.append(f"{len(config.bits)} uniform references")
    refine = config.bayes.iterations * config.bayes.batch
    if config.strategy == "halving":
        sizes, steps = config.halving.sizes(), config.halving.steps(proxy.steps)
        forwards += sizes[0] * eval_windows
        parts.append(f"{sizes[0]} plans screened forward only")
        for size, rung_steps in zip(sizes[1:], steps[1:], strict=True):
            promoted = size + (1 if rung_steps == proxy.steps else 0)  # the knapsack plan
            forwards += promoted * proxy_windows(rung_steps)
            parts.append(f"{promoted} proxy fine-tunes of {rung_steps} steps")
    else:
        evolved = config.population + config.offspring * config.generations
        forwards += evolved * proxy_windows(proxy.steps)
        parts.append(f"{evolved} proxy fine-tunes of {proxy.steps} steps (NSGA-II)")
    if refine:
        forwards += refine * proxy_windows(proxy.steps)
        how = f"of {proxy.steps} steps" if proxy.steps else "scored forward only"
        parts.append(f"{refine} Bayesian pick{'s' if refine > 1 else ''} {how}")
    fitted = num_blocks * block_weights * len(quantised)
    return SearchWork(", ".join(parts), forwards, fitted)


def profile_work(
    *, num_blocks: int, block_weights: int, bits: list[int], calibration_windows: int, modules: int = 0
) -> SearchWork:
    """Counts a ``qra profile`` alone: the reference forward, then one per (block, bits), or
    per (block, module, bits) with ``modules`` linears a block profiled one at a time (the
    fits are the same: each linear at each bit-width once)."""
    quantised = [b for b in bits if b != 16]
    rows = num_blocks * max(modules, 1)
    per_module = f" x {modules} modules" if modules else ""
    return SearchWork(
        f"{num_blocks} blocks{per_module} x {len(quantised)} bit-widths over {calibration_windows} windows",
        calibration_windows * (1 + rows * len(quantised)),
        num_blocks * block_weights * len(quantised),
    )


def measure_rates(
    model: Any, windows: Any, batch_size: int, weight: Any, bits: int, group_size: int, method: str = "hqq"
) -> tuple[float, float]:
    """Seconds per window forward and per fitted weight on this machine, from one of each.

    Args:
        model: The full-precision model, on its device.
        windows: (N, T) token windows; the first ``batch_size`` are timed (after one warm-up).
        batch_size: Windows per timed forward.
        weight: One linear's weight, fitted once at ``bits``.
        bits: A bit-width of the space.
        group_size: The quantisation group size.
        method: The quantiser the work fits with (hqq, rtn or symmetric).

    Returns:
        (seconds per window forward, seconds per weight fitted).
    """
    import torch

    from qradaptor.quant.quantizer import quantize

    batch = windows[:batch_size].to(next(model.parameters()).device)
    with torch.no_grad():
        model(batch[:1])  # warm-up: first-call allocations and kernel choice
        began = time.perf_counter()
        model(batch)
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        per_window = (time.perf_counter() - began) / len(batch)
    began = time.perf_counter()
    quantize(weight.detach().float(), bits, group_size, method)  # type: ignore[arg-type]
    per_weight = (time.perf_counter() - began) / weight.numel()
    return per_window, per_weight


def describe(work: SearchWork, per_window: float, per_weight: float, what: str = "search") -> str:
    """One line: what the search (or the profile: ``what``) will do and its estimated minutes here."""
    seconds = work.window_forwards * per_window + work.fitted_weights * per_weight
    fits = work.fitted_weights * per_weight
    return (
        f"this {what}: {work.summary}; about {math.ceil(seconds / 60)} min on this device "
        f"({work.window_forwards:,} window forwards at {per_window * 1e3:.0f} ms, weight fits "
        f"{fits / 60:.1f} min; measured just now)"
    )


def cost_line(
    model: Any,
    structure: Any,
    config: SearchConfig,
    proxy: ProxyConfig,
    windows: Any,
    calibration_windows: int,
    profile: bool,
) -> str:
    """The search's work (``search_work``) priced by rates measured on ``model`` just now."""
    work = search_work(
        config,
        proxy,
        num_blocks=structure.num_blocks,
        block_weights=sum(info.in_features * info.out_features for info in structure.linears),
        calibration_windows=calibration_windows,
        profile=profile,
        modules=len(structure.linears) if config.profile_granularity == "module" else 0,
    )
    weight = model.get_submodule(structure.module_path(0, structure.linears[0].name)).weight
    quantised = [b for b in config.bits if b != 16] or [4]
    rates = measure_rates(model, windows, proxy.batch_size, weight, max(quantised), config.group_size)
    return describe(work, *rates)


def profile_line(
    model: Any,
    structure: Any,
    windows: Any,
    bits: list[int],
    batch_size: int,
    group_size: int,
    method: str,
    granularity: str = "block",
) -> str:
    """``profile_work`` priced by rates measured on ``model`` just now, at the profile's batch."""
    work = profile_work(
        num_blocks=structure.num_blocks,
        block_weights=sum(info.in_features * info.out_features for info in structure.linears),
        bits=bits,
        calibration_windows=len(windows),
        modules=len(structure.linears) if granularity == "module" else 0,
    )
    weight = model.get_submodule(structure.module_path(0, structure.linears[0].name)).weight
    quantised = [b for b in bits if b != 16] or [4]
    rates = measure_rates(model, windows, batch_size, weight, max(quantised), group_size, method)
    return describe(work, *rates, what="profile")
