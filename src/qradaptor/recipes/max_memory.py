"""``--max-memory SIZE`` of qra profile, search, train and eval: each verb's predicted peak
(``stage_memory``, from the config alone) is checked against the limit before any weight
loads, and on CUDA the process is capped there (``torch.cuda.set_per_process_memory_fraction``).

Each ``check_*`` returns what the verb must change to fit (gradient checkpointing turned on)
or raises one ``ValueError`` with the numbers; search and train try their ways to fit through
one ``first_fit``. The verbs (``recipes/search.py``, ``recipes/train.py``, ``cli/profile.py``,
``cli/eval.py``) call them; the messages name the command line's options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from qradaptor.stage_memory import (
    StagePeak,
    cap_device_,
    check_device_limit,
    check_limit,
    mib,
    parse_size,
    profile_peak,
)

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan
    from qradaptor.train.config import TrainConfig

Fit = TypeVar("Fit")
PARTIAL_MARGIN = 0.05
"""Share of --max-memory a fine-tune that checkpoints only some blocks keeps free: the fewest
blocks that fit put the peak close to the limit by construction, and a cap also counts what the
allocator holds in reserve (fragmentation), which the prediction does not."""


CUDA_PROCESS_BYTES = 768 * 2**20
"""A CUDA process's memory outside PyTorch's allocator: the context, cuBLAS and the Triton
modules. --max-memory counts it, as nvidia-smi counts a process: measured 686-758 MiB on an
H100 with torch 2.11 (docs/SCALE.md, fourth 8B run, where the allocator alone was capped and the
packed fine-tune's process peaked 100 MiB over a 24GB limit)."""


def _outside_allocator(device: str) -> int:
    """Bytes of this process on ``device`` that PyTorch's allocator does not hold: 0 off CUDA."""
    return CUDA_PROCESS_BYTES if device.startswith("cuda") else 0


def with_process(peak: StagePeak, device: str) -> StagePeak:
    """``peak`` plus, on CUDA, the process's memory outside the allocator (``CUDA_PROCESS_BYTES``)."""
    outside = _outside_allocator(device)
    if not outside:
        return peak
    part = ("CUDA context and libraries", outside)
    return replace(peak, parts=(*peak.parts, part), fixed=peak.fixed + outside)


def parse(max_memory: str | None) -> int | None:
    """Bytes of ``--max-memory``, None when not given; a bad size fails before anything else.

    Raises:
        ValueError: naming the accepted forms.
    """
    return None if max_memory is None else parse_size(max_memory)


def enforce(verb: str, peak: StagePeak, limit: int, device: str, change: str) -> None:
    """Refuses ``peak`` (``with_process`` already) over ``limit`` (or a limit over the GPU), then
    caps the GPU's allocator at the limit less the process's own memory, and says so.

    Raises:
        ValueError: see ``stage_memory.check_device_limit`` and ``check_limit``.
    """
    check_device_limit(limit, device)
    check_limit(peak, limit, change=change)
    fraction = cap_device_(limit - _outside_allocator(device), device)
    capped = f"; {device} capped at {fraction:.3f} of its memory" if fraction is not None else ""
    print(
        f"qra {verb}: predicted peak {mib(peak.total)} within --max-memory {mib(limit)}" + capped,
        file=sys.stderr,
    )


def first_fit(
    verb: str,
    fits: Sequence[Fit],
    peak: Callable[[Fit], StagePeak],
    limit: int,
    device: str,
    change: str,
) -> tuple[Fit, StagePeak]:
    """The first of ``fits`` (cheapest in time first) whose predicted peak is within ``limit``,
    enforced (``enforce``), and the peak of ``fits[0]`` (as it is), for the caller's one line
    on what it turned on.

    Raises:
        ValueError: when not even the last (everything on) fits, with its numbers.
    """
    peaks: list[StagePeak] = []
    for fit in fits:
        peaks.append(with_process(peak(fit), device))
        if peaks[-1].total <= limit:
            break
    enforce(verb, peaks[-1], limit, device, change)  # the last one tried: refused if it is over too
    return fits[len(peaks) - 1], peaks[0]


def check_profile(
    limit: int,
    structure: ModelStructure,
    *,
    samples: int,
    seq_len: int,
    batch_size: int,
    weight_bytes: int,
    device: str,
) -> None:
    """``qra profile``: the profile's peak at ``weight_bytes`` (4 fp32, 2 bf16)."""
    peak = profile_peak(
        structure, samples=samples, seq_len=seq_len, batch_size=batch_size, weight_bytes=weight_bytes
    )
    change = "--samples, --seq-len or --batch-size" + (
        ", or load in bf16 (--dtype bf16)" if weight_bytes == 4 else ""
    )
    enforce("profile", with_process(peak, device), limit, device, change)


@dataclass(frozen=True)
class SearchFit:
    """How ``qra search`` stays within ``--max-memory``: what ``run_search`` is told to do."""

    gradient_checkpointing: bool
    """The proxy steps recompute activations in the backward."""
    cache_on_host: bool
    """The QuantCache stays on the host; each candidate's codes move to the device when built."""
    references: bool = True
    """The uniform reference plans are scored (when the config asks for them); False when they
    alone do not fit: the search then scores only plans within the budget."""

    def run_search_options(self) -> dict[str, bool]:
        """``search.pipeline.run_search``'s memory keywords for this fit (the shared base always)."""
        return {
            "shared_base": True,
            "gradient_checkpointing": self.gradient_checkpointing,
            "cache_on_host": self.cache_on_host,
        }


def check_search(
    limit: int,
    structure: ModelStructure,
    config: Any,
    *,
    calibration_samples: int,
    seq_len: int,
    batch_size: int,
    profiles: bool,
    device: str,
    weight_bytes: int = 4,
) -> SearchFit:
    """``qra search`` on the low-memory path (shared base, packed candidates, at ``weight_bytes``
    per weight: 4 fp32, 2 bf16): the first of these that fits, cheapest first: as it is, the
    QuantCache on the host (CUDA only: on a CPU the host is the device), gradient
    checkpointing, both. Says in one line what it turned on. The candidate is priced at the
    space's largest plan, or without uniform references under an avg-bits budget at the dearest
    plan within the budget (every other plan scored is repaired into it). When the references
    are asked for and only leaving them out fits (an 8B at 24 GB: the uniform 8-bit plan is the
    largest candidate), they are left out, said, and ``SearchFit.references`` is False.

    Raises:
        ValueError: when even the smallest plan of the space cannot be searched within the limit,
            or the largest cannot at this batch and length with everything on.
    """
    from qradaptor.memory import plan_memory
    from qradaptor.search.pipeline import search_space
    from qradaptor.search.space import smallest_and_largest
    from qradaptor.stage_memory import search_peak

    space, table, _ = search_space(structure, config)
    low, largest = smallest_and_largest(table, space)
    within = largest
    if config.budget.kind == "avg_bits":
        # Every plan scored is repaired into the budget (the uniform references are not), so
        # without references the dearest plan within it bounds the candidate, not the largest.
        from qradaptor.search.knapsack import dearest_within

        within = dearest_within(table, config.budget)
    references = config.references and config.budget.kind == "avg_bits"
    evaluators = config.halving.rungs + 1 if config.strategy == "halving" else 1
    host = device.startswith("cuda")

    def peak(genome: Any, fit: SearchFit) -> StagePeak:
        plan = space.to_plan(genome, model_signature=structure.signature, group_size=config.group_size)
        return search_peak(
            structure,
            plan_memory(structure, plan, weight_bytes=weight_bytes),
            bits=space.bit_choices,
            group_size=config.group_size,
            calibration_samples=calibration_samples,
            seq_len=seq_len,
            batch_size=batch_size,
            evaluators=evaluators,
            profiles=profiles,
            shared_base=True,
            gradient_checkpointing=fit.gradient_checkpointing,
            weight_bytes=weight_bytes,
            cache_on_device=not fit.cache_on_host,
            double_quant=config.double_quant,
            quant_method=config.quant_method,
        )

    fits = [SearchFit(False, False), *([SearchFit(False, True)] if host else []), SearchFit(True, False)]
    fits += [SearchFit(True, True)] if host else []
    if references:  # the same ladder again without them, after every fit with them
        fits += [replace(fit, references=False) for fit in fits]
    smallest = with_process(peak(low, fits[-1]), device)
    if smallest.total > limit:
        bf16 = ", load in bf16 (--dtype bf16)" if weight_bytes == 4 else ""
        raise ValueError(
            f"--max-memory {mib(limit)} is below what even the smallest plan of the search "
            f"space needs: predicted peak {smallest.describe()}; give a larger limit{bf16}, fewer "
            "--bits choices, or lower --calibration-samples, --seq-len or --batch-size"
        )
    change = "--batch-size, --seq-len or --calibration-samples, or drop the highest --bits or --ranks choices"

    def candidate(fit: SearchFit) -> Any:
        return largest if config.references and fit.references else within

    fit, plain = first_fit("search", fits, lambda f: peak(candidate(f), f), limit, device, change)
    turned = [
        *(["the QuantCache kept on the host"] if fit.cache_on_host else []),
        *(["gradient checkpointing in the proxy fine-tunes"] if fit.gradient_checkpointing else []),
        *(["the uniform reference plans left out (as --no-references)"] if not fit.references else []),
    ]
    if turned:
        print(
            f"qra search: {' and '.join(turned)}: otherwise the predicted peak {mib(plain.total)} "
            f"exceeds --max-memory {mib(limit)}",
            file=sys.stderr,
        )
    return fit


def check_train(
    limit: int,
    structure: ModelStructure,
    method_name: str,
    config: TrainConfig,
    plan: Plan | None,
    *,
    rank: int,
    bits: int,
    adalora_init_r: int | None,
    adalora_target_r: int | None,
    device: str,
) -> TrainConfig:
    """``qra train``: the config to train with, gradient checkpointing turned on when only
    that makes the predicted peak fit (said in one line).

    Raises:
        ValueError: when the peak does not fit even with gradient checkpointing.
    """
    import torch

    from qradaptor.memory import plan_memory
    from qradaptor.stage_memory import train_peak
    from qradaptor.train.adalora import adalora_ranks, mean_adapted_rank
    from qradaptor.train.methods import get_method, method_plan
    from qradaptor.train.run import _memory

    method = get_method(method_name)
    norms = [1.0] * structure.num_blocks if method.baseline == "rank-gradient" else None  # ranks' mean
    the_plan = method_plan(method, structure, plan, rank=rank, bits=bits, gradient_norms=norms)
    the_plan = the_plan.for_model(structure)
    adalora = None
    if method.adapter == "adalora":
        adalora = adalora_ranks(mean_adapted_rank(the_plan), adalora_init_r, adalora_target_r)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    act = 2 if dtype == torch.bfloat16 else 4

    report = plan_memory(structure, the_plan, weight_bytes=act)  # the same for every config tried

    def peak(cfg: TrainConfig) -> StagePeak:
        # The longest example is not known before the data loads: every one at --seq-len.
        predicted = _memory(structure, the_plan, method, cfg, cfg.seq_len, dtype, adalora).predicted_peak
        found = train_peak(structure, report, predicted, act)
        if cfg.checkpoint_blocks is None:
            return found
        margin = ("margin of a partial checkpoint", int(limit * PARTIAL_MARGIN))
        return replace(found, parts=(*found.parts, margin))

    change = "--batch-size (raise --grad-accum to keep the effective batch) or --seq-len"
    # Fewest checkpointed blocks first: each one recomputed costs time, so a base that leaves
    # more room (a packed one) recomputes fewer; all of them last, as --gradient-checkpointing.
    blocks = structure.num_blocks
    checkpointed = [] if config.gradient_checkpointing else [
        replace(config, gradient_checkpointing=True, checkpoint_blocks=None if k == blocks else k)
        for k in range(1, blocks + 1)
    ]  # fmt: skip
    fits = [config, *checkpointed]
    fit, plain = first_fit("train", fits, peak, limit, device, change)
    if fit is not config:
        k = fit.checkpoint_blocks or blocks
        print(
            f"qra train: gradient checkpointing on {k} of {blocks} blocks: without it the predicted "
            f"peak {mib(plain.total)} exceeds --max-memory {mib(limit)}",
            file=sys.stderr,
        )
    return fit


def check_eval(
    limit: int, structure: ModelStructure, plan: Plan | None, *, batch_size: int, seq_len: int, device: str
) -> None:
    """``qra eval``: the built plan (None: the unquantised model) scoring one batch."""
    from qradaptor.memory import plan_memory
    from qradaptor.plan import UNQUANTIZED, Plan
    from qradaptor.stage_memory import eval_peak

    weight_bytes = 2 if device.startswith("cuda") else 4
    the_plan = Plan.uniform(structure.num_blocks, UNQUANTIZED, 0) if plan is None else plan
    report = plan_memory(structure, the_plan, weight_bytes=weight_bytes)
    peak = eval_peak(structure, report, batch_size=batch_size, seq_len=seq_len, weight_bytes=weight_bytes)
    enforce("eval", with_process(peak, device), limit, device, "--batch-size or --seq-len")
