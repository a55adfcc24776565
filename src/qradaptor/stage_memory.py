"""Peak memory of each stage (profile, search, train, eval) from the model config alone, and
the ``--max-memory`` limit every verb checks it against before any weight is loaded.

Notation (all from ``ModelStructure``, i.e. the config): L blocks, H hidden size, V vocabulary,
D the dense model's bytes at ``weight_bytes`` w (``dense_bytes``); a run's N windows of T
tokens, B per forward pass.

    profile  D + N T V 4            full-precision log-probs, kept in fp32 (sensitivity.py)
               + L N T H w          every block's recorded output (``reuse_prefix``)
               + one block's linears dense at w (its quantise-dequantise copies)
               + [the QuantCache: every block linear at every bit-width, when a search fills it]
               + 16 B T V           the KL of one batch: test log-probs, exp, difference and
                                    product, each (B, T, V) fp32 (``_kl_sum``)
    proxy    D (the loaded model) + the QuantCache + E copies of the base (one per evaluator
             alive: the halving strategy keeps one per rung) + one candidate + its training step
             (``memory.training_memory``: adapters, gradients, AdamW, activations, logits);
             with ``shared_base`` the copies share the base's tensors and a candidate stores
             only its own block linears (packed codes with ``packed``) and adapters
    search   the larger of the profile (with the cache) and the proxy phase
    train    the larger of the dense load (D, before the plan quantises it) and the training step
    eval     the larger of the dense load and the built plan + 16 B T V of one batch's scoring

Checked against the bytes of tensors alive at once on tiny models (``tensor_peak.TensorPeak``,
tests/test_stage_memory.py); the GPU's CUDA context and allocator slack come on top (about
600 MiB and x1.3, docs/SCALE.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qradaptor.memory import MemoryReport
    from qradaptor.models.structure import ModelStructure

SIZE_FORMS = (
    "a number and a unit with nothing between, e.g. 24GB, 24GiB, 24000MB "
    "(units KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
)
"""What ``parse_size`` accepts, for its error message."""
_SIZE_UNITS = {
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]+)$")
LOGIT_BYTES = 16
"""Bytes per (token, vocabulary entry) at the peak of scoring one batch: four fp32 tensors."""
MIB = 2**20


def mib(nbytes: int) -> str:
    """``nbytes`` in MiB: "24,576 MiB", one decimal below 10 MiB ("0.5 MiB")."""
    return f"{nbytes / MIB:,.1f} MiB" if nbytes < 10 * MIB else f"{nbytes / MIB:,.0f} MiB"


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Bytes of "24GB" (10**9), "24GiB" (2**30), "24000MB", "1.5TB"; units case-insensitive.

    Raises:
        ValueError: naming ``option``, the text and the accepted forms, for anything else
            (no unit, a space, an unknown unit, zero).
    """
    match = _SIZE_RE.match(text.strip()) if isinstance(text, str) else None
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{option} must be {SIZE_FORMS}; got {text!r}")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"{option} must be more than 0 bytes, got {text!r}")
    return size


@dataclass(frozen=True)
class StagePeak:
    """Predicted peak bytes of one stage, by part."""

    stage: str
    """"profile", "search", "train" or "eval"."""
    parts: tuple[tuple[str, int], ...]
    """(what, bytes) of every part alive at the peak; they sum to ``total``."""
    fixed: int
    """Bytes no batch or sequence length changes (weights, copies, cache): the floor of any limit."""

    @property
    def total(self) -> int:
        """Predicted peak bytes."""
        return sum(nbytes for _, nbytes in self.parts)

    def describe(self) -> str:
        """e.g. "4,120 MiB (weights 3,000 MiB + log-probs 1,000 MiB + ...)"."""
        inner = " + ".join(f"{what} {mib(nbytes)}" for what, nbytes in self.parts if nbytes)
        return f"{mib(self.total)} ({inner})"


def dense_bytes(structure: ModelStructure, weight_bytes: int) -> int:
    """Bytes of the unquantised model's tensors at ``weight_bytes`` per value (no adapters)."""
    from qradaptor.memory import plan_memory
    from qradaptor.plan import UNQUANTIZED, Plan

    plan = Plan.uniform(structure.num_blocks, UNQUANTIZED, 0)
    return plan_memory(structure, plan, weight_bytes=weight_bytes).total_bytes


def _vocab(structure: ModelStructure) -> int:
    return structure.head_shape[0] if structure.head_shape else structure.embed_shape[0]


def _block_linear_bytes(structure: ModelStructure, weight_bytes: int) -> int:
    """One block's linears dense, biases included."""
    return sum(
        (info.numel + (info.out_features if info.bias else 0)) * weight_bytes for info in structure.linears
    )


def cache_bytes(
    structure: ModelStructure,
    bits: Sequence[int],
    group_size: int,
    *,
    double_quant: bool = False,
    quant_method: str = "hqq",
) -> int:
    """Bytes of a QuantCache holding every block linear at every quantised bit-width of ``bits``.

    As ``quant_method`` and ``double_quant`` store the fits (a symmetric fit has a scale and no
    zero; double quantisation 8-bit scales and zeros): ``memory.quantized_nbytes``, the bytes a
    built plan holds.
    """
    from qradaptor.memory import quantized_nbytes
    from qradaptor.plan import SYMMETRIC_METHOD, UNQUANTIZED

    stored = {"double_quant": double_quant, "symmetric": quant_method == SYMMETRIC_METHOD}
    return structure.num_blocks * sum(
        quantized_nbytes(info.out_features, info.in_features, b, group_size, **stored)
        for info in structure.linears
        for b in bits
        if b != UNQUANTIZED
    )


def profile_peak(
    structure: ModelStructure,
    *,
    samples: int,
    seq_len: int,
    batch_size: int,
    weight_bytes: int = 4,
    cache: int = 0,
    stage: str = "profile",
) -> StagePeak:
    """Peak bytes of ``profile_sensitivity`` on ``samples`` windows of ``seq_len`` tokens.

    Args:
        structure: the model's (``structure_from_config``).
        samples, seq_len, batch_size: the calibration windows and windows per forward.
        weight_bytes: bytes per weight and activation (4 fp32, 2 bf16).
        cache: bytes of the QuantCache the profile fills (``cache_bytes``; 0 for none).
        stage: the name reported.
    """
    hidden = structure.embed_shape[1]
    vocab = _vocab(structure)
    tokens = samples * seq_len
    weights = dense_bytes(structure, weight_bytes)
    block = _block_linear_bytes(structure, weight_bytes)
    parts = (
        ("weights", weights),
        ("full-precision log-probs", tokens * vocab * 4),
        ("recorded block outputs", structure.num_blocks * tokens * hidden * weight_bytes),
        ("one quantised block", block),
        ("fitted codes", cache),
        ("scoring one batch", min(batch_size, samples) * seq_len * vocab * LOGIT_BYTES),
    )
    return StagePeak(stage, parts, fixed=weights + block + cache)


def proxy_peak(
    structure: ModelStructure,
    largest: MemoryReport,
    *,
    batch_size: int,
    seq_len: int,
    weight_bytes: int = 4,
    base_copies: int = 1,
    cache: int = 0,
    shared_base: bool = False,
    gradient_checkpointing: bool = False,
    stage: str = "search",
) -> StagePeak:
    """Peak bytes of the search's proxy fine-tunes: the loaded model, its copies, one candidate.

    Args:
        structure: the model's.
        largest: ``plan_memory`` of the space's largest plan at ``weight_bytes``.
        batch_size, seq_len: one proxy step's windows.
        weight_bytes: bytes per weight and activation of the proxy (4: fp32).
        base_copies: evaluators alive, each with its copy of the base (today's path: a deep copy each).
        cache: bytes of the QuantCache (``cache_bytes``).
        shared_base: copies and candidates share the base's tensors and candidates are
            packed (``ProxyEvaluator(shared_base=True)``); else each evaluator deep-copies the
            base and each candidate is a deep copy with dense (simulated) linears.
        gradient_checkpointing: the proxy step recomputes activations.
        stage: the name reported.
    """
    from qradaptor.memory import training_memory
    from qradaptor.plan import UNQUANTIZED

    dense = dense_bytes(structure, weight_bytes)
    step = training_memory(
        structure,
        largest,
        batch_size=batch_size,
        seq_len=seq_len,
        act_bytes=weight_bytes,
        gradient_checkpointing=gradient_checkpointing,
    )
    if shared_base:  # quantised block linears and adapters; everything else is the base's
        copies = 0
        candidate = largest.adapter_bytes + sum(
            layer.weight_bytes + layer.bias_bytes for layer in largest.layers if layer.bits != UNQUANTIZED
        )
    else:  # a deep copy with simulated (dense) linears
        copies = base_copies * dense
        candidate = dense + largest.adapter_bytes
    parts = (
        ("weights", dense),
        ("base copies", copies),
        ("fitted codes", cache),
        ("one candidate", candidate),
        ("gradients and AdamW", step.gradients + step.optimizer),
        ("activations", step.activations),
    )
    return StagePeak(stage, parts, fixed=dense + copies + cache + candidate)


def search_peak(
    structure: ModelStructure,
    largest: MemoryReport,
    *,
    bits: Sequence[int],
    group_size: int,
    calibration_samples: int,
    seq_len: int,
    batch_size: int,
    evaluators: int,
    profiles: bool = True,
    shared_base: bool = False,
    gradient_checkpointing: bool = False,
    weight_bytes: int = 4,
    cache_on_device: bool = True,
    double_quant: bool = False,
    quant_method: str = "hqq",
) -> StagePeak:
    """Peak of ``qra search``: the larger of its profile and its proxy phase.

    Args:
        structure: the model's.
        largest: ``plan_memory(structure, largest plan of the space, weight_bytes=weight_bytes)``.
        bits: the space's bit choices (the QuantCache fills at each quantised one).
        group_size: the plans' group size.
        calibration_samples, seq_len, batch_size: the profile's windows, the proxy's batch.
        evaluators: proxy evaluators alive at once (the halving strategy: rungs + 1).
        profiles: the search profiles (no ``--sensitivity`` given).
        shared_base, gradient_checkpointing: as ``proxy_peak``.
        weight_bytes: 4 for fp32, 2 for ``qra search --dtype bf16``.
        cache_on_device: False: the QuantCache is kept on the host (``QuantCache(storage="cpu")``),
            so neither phase holds it on the device.
        double_quant, quant_method: how the space's fits store their scales and zeros.
    """
    stored = {"double_quant": double_quant, "quant_method": quant_method}
    cache = cache_bytes(structure, bits, group_size, **stored) if cache_on_device else 0
    proxy = proxy_peak(
        structure,
        largest,
        batch_size=batch_size,
        seq_len=seq_len,
        weight_bytes=weight_bytes,
        base_copies=evaluators,
        cache=cache,
        shared_base=shared_base,
        gradient_checkpointing=gradient_checkpointing,
    )
    if not profiles:
        return proxy
    # The search profiles with profile_sensitivity's default of 4 windows per forward.
    profile = profile_peak(
        structure,
        samples=calibration_samples,
        seq_len=seq_len,
        batch_size=4,
        weight_bytes=weight_bytes,
        cache=cache,
        stage="search",
    )
    return max(profile, proxy, key=lambda peak: peak.total)


def train_peak(
    structure: ModelStructure, report: MemoryReport, step_total: int, weight_bytes: int
) -> StagePeak:
    """Peak of ``qra train``: the dense load (before quantising) or the training step, whichever is larger."""
    dense = dense_bytes(structure, weight_bytes)
    if dense >= step_total:
        return StagePeak("train", (("dense weights while the plan is built", dense),), fixed=dense)
    parts = (("weights and adapters", report.total_bytes), ("training step", step_total - report.total_bytes))
    return StagePeak("train", parts, fixed=report.total_bytes)


def eval_peak(
    structure: ModelStructure, report: MemoryReport, *, batch_size: int, seq_len: int, weight_bytes: int
) -> StagePeak:
    """Peak of ``qra eval``: the dense load, or the built plan scoring one batch of B x T tokens."""
    dense = dense_bytes(structure, weight_bytes)
    scoring = batch_size * seq_len * _vocab(structure) * LOGIT_BYTES
    if dense >= report.total_bytes + scoring:
        return StagePeak("eval", (("dense weights while the plan is built", dense),), fixed=dense)
    parts = (("weights and adapters", report.total_bytes), ("scoring one batch", scoring))
    return StagePeak("eval", parts, fixed=report.total_bytes)


def check_limit(peak: StagePeak, limit: int, *, change: str) -> None:
    """Refuses a stage whose predicted peak exceeds ``limit`` bytes, with the numbers.

    Args:
        peak: the prediction.
        limit: ``--max-memory`` in bytes.
        change: what the user can lower, e.g. "--batch-size, --seq-len or --samples".

    Raises:
        ValueError: the predicted peak and its parts, the limit, and what to change; when the
            fixed part alone is over the limit, that no batch or length fits.
    """
    if peak.total <= limit:
        return
    head = f"--max-memory {mib(limit)} is below what qra {peak.stage} needs: predicted peak {peak.describe()}"
    if peak.fixed > limit:
        raise ValueError(
            f"{head}; the weights, copies and codes (on CUDA with the process itself) alone need "
            f"{mib(peak.fixed)}, so no batch or sequence length fits: give a larger limit or a "
            "smaller model or plan"
        )
    raise ValueError(f"{head}; lower {change}")


def check_device_limit(limit: int, device: str) -> None:
    """On CUDA, refuses a limit above the device's memory; on CPU nothing is checked here.

    Raises:
        ValueError: naming the limit and the device's total memory.
    """
    if not device.startswith("cuda"):
        return
    import torch

    from qradaptor.devices import indexed

    where = indexed(device)
    total = torch.cuda.get_device_properties(where).total_memory
    if limit > total:
        raise ValueError(
            f"--max-memory {mib(limit)} is above the {mib(total)} of {device} "
            f"({torch.cuda.get_device_name(where)}); give at most that"
        )


def cap_device_(limit: int, device: str) -> float | None:
    """On CUDA, caps this process at ``limit`` bytes (``set_per_process_memory_fraction``):
    an allocation past it fails as an out-of-memory error. Returns the fraction set (None on CPU).
    """
    if not device.startswith("cuda"):
        return None
    import torch

    from qradaptor.devices import indexed

    where = indexed(device)  # set_per_process_memory_fraction refuses a bare "cuda"
    total = torch.cuda.get_device_properties(where).total_memory
    fraction = min(1.0, limit / total)
    torch.cuda.set_per_process_memory_fraction(fraction, where)
    return fraction
