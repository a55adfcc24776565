"""Named baseline plans: the paper's baselines and the seed study's rank heuristics, as Plans.

Every baseline is a pure function of a ``ModelStructure`` (no weights), except
``rank-gradient``, which also needs per-block gradient norms measured by a short probe
(:func:`qradaptor.train.probe.gradient_norms`). Notation: L blocks, base rank r (``rank``),
bits b (``bits``); for a linear m of a block, n_m = in_m + out_m, so a rank-r_m adapter
has r_m * n_m parameters.

Bits and ranks:
    lora16              every block 16-bit (unquantised), rank r (LoRA on the 16-bit model).
    qlora               every block b-bit, rank r (QLoRA with our quantiser).
    qlora-4/-3/-2       as qlora with b fixed at 4, 3, 2.
    embed8-body4        every block 4-bit, rank r; embedding and head 8-bit (a tied model
                        has one weight for both, so both are 8 anyway).

Rank heuristics, as the seed (feasibility) study describes them; bits b in every block.
Depth is read from the top layer (block L-1, next to the head) down to block 0:
    rank-linear-decay   block-granularity; the highest rank at the TOP layer, decaying
                        linearly down to the bottom: real ranks from r_lo = r/2 at block 0
                        up to r_hi = 3r/2 at block L-1,
                            x_l = r_lo + (r_hi - r_lo) * l / (L - 1),
                        whose sum is L (r_hi + r_lo) / 2 = r L exactly; rounded to integers
                        by :func:`largest_remainder` so that sum_l r_l = r L (uniform r's
                        adapter size, every block having the same linears). A 1-block
                        model gets r. With r = 1 the bottom blocks may round to 0.
    rank-linear-growth  the same ranks in reverse order (r_hi at block 0, r_lo at L-1).
    rank-attn-focus     module granularity. The block's linears split into A (attention:
                        a parent module named *attn* or *attention*, e.g. self_attn.q_proj
                        or GPT-2's attn.c_attn) and F (FFN: a parent named *mlp*, *ffn* or
                        *feed_forward*, e.g. mlp.down_proj or GPT-2's mlp.c_proj); any other
                        linear keeps rank r. Attention at r, the FFN at max(1, floor(r/2))
                        (the study's "r versus r/2"): fewer adapter parameters than uniform r.
    rank-ffn-focus      FFN at r, attention at max(1, floor(r/2)).
Budget-matched variants of the focus heuristics (the same adapter size as uniform r):
    rank-attn-focus-matched  With N_X = sum_{m in X} n_m and the uniform budget
                        P = r (N_A + N_F), the focused group A gets
                            r_A = min(2r, floor(P / N_A))
                        (2r unless that alone exceeds P) and the other group the largest
                        integer rank >= 0 that keeps the block within budget:
                            r_F = floor((P - r_A N_A) / N_F),
                        so r_A N_A + r_F N_F <= P, with equality up to less than N_F.
    rank-ffn-focus-matched  the same with the roles of A and F swapped. In Llama-style blocks
                        N_F > N_A, so 2r N_F > P: the FFN gets floor(P / N_F) < 2r
                        (e.g. SmolLM2-135M at r = 16: FFN 25, attention 1).
    rank-gradient       block-granularity; ranks proportional to per-block gradient norms
                        g_l >= 0 (not all 0) at the same total T = r L, each at least 1:
                        water-filling, blocks whose quota T' g_l / sum g falls below 1 are
                        fixed at 1 and T' (the total left) is shared among the rest in
                        proportion to g, until every quota is >= 1; then
                        :func:`largest_remainder` rounds the quotas so that sum_l r_l = r L.

Training methods (AdaLoRA, DoRA, LoftQ, ...) are not plans: they are ``TRAINING_METHODS``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

from qradaptor.plan import UNQUANTIZED, LayerSpec, Plan, check_bits

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure

BASELINE_PLANS: tuple[str, ...] = (
    "lora16",
    "qlora",
    "qlora-4",
    "qlora-3",
    "qlora-2",
    "embed8-body4",
    "rank-linear-decay",
    "rank-linear-growth",
    "rank-attn-focus",
    "rank-ffn-focus",
    "rank-attn-focus-matched",
    "rank-ffn-focus-matched",
    "rank-gradient",
)
"""Names :func:`baseline_plan` accepts."""
TRAINING_METHODS: tuple[str, ...] = (
    "amq-lora",
    "adalora",
    "dora",
    "qdora",
    "loftq",
    "qlora-nf4",
    "qlora-nf4-nodq",
)
"""Baselines that differ in how they train, not in their plan: ``qra train --method NAME``."""
FIXED_BITS: dict[str, int] = {
    "lora16": UNQUANTIZED,
    "qlora-4": 4,
    "qlora-3": 3,
    "qlora-2": 2,
    "embed8-body4": 4,
}
"""Baselines whose name fixes the block bits; they ignore ``bits``."""
_ATTENTION = ("attn", "attention")
_FFN = ("mlp", "ffn", "feed_forward", "feedforward")


def check_baseline_name(name: object, where: str = "baseline") -> str:
    """Returns ``name`` if it is one of ``BASELINE_PLANS``, else raises ValueError listing them."""
    if name in BASELINE_PLANS:
        return str(name)
    if name in TRAINING_METHODS:
        raise ValueError(
            f"{where} {name!r} is a training method, not a plan: train it with "
            f"`qra train --method {name}`; plan baselines are {', '.join(BASELINE_PLANS)}"
        )
    raise ValueError(f"{where} must be one of {', '.join(BASELINE_PLANS)}, got {name!r}")


def largest_remainder(weights: Sequence[float | Fraction], total: int) -> list[int]:
    """Integers proportional to ``weights`` that sum to ``total`` exactly (Hamilton's method).

    Each entry gets floor(q_i) of its quota q_i = total * w_i / sum(w); the units left
    go one each to the largest fractional parts q_i - floor(q_i), ties to the lower index.
    Quotas are computed exactly (as fractions), so float rounding never moves a unit.

    Args:
        weights: finite, >= 0, not all 0.
        total: integer >= 0.

    Returns:
        One integer >= 0 per weight, summing to ``total``.

    Raises:
        ValueError: if ``weights`` is empty, has a negative or non-finite entry or sums
            to 0, or ``total`` is not an integer >= 0.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be an integer >= 0, got {total!r}")
    exact = [_fraction(w, "weights") for w in weights]
    if not exact:
        raise ValueError("weights must have at least one entry, got none")
    whole = sum(exact)
    if whole == 0:
        raise ValueError(f"weights must not all be 0, got {list(weights)!r}")
    quotas = [total * w / whole for w in exact]
    counts = [math.floor(q) for q in quotas]
    left = total - sum(counts)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def _fraction(value: object, where: str) -> Fraction:
    """``value`` as an exact Fraction if it is a finite real >= 0, else ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} must hold real numbers, got {value!r}")
    if not isinstance(value, numbers.Rational):
        value = float(value)  # numpy floats too
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{where} must be >= 0, got {value!r}")
    return Fraction(value)


def linear_ranks(num_blocks: int, rank: int, *, decay: bool) -> list[int]:
    """Block ranks of rank-linear-decay (``decay``: r/2 at block 0 up to 3r/2 at the top block)
    or -growth (reversed), summing to r L."""
    if num_blocks == 1:
        return [rank]
    lo, hi = Fraction(rank, 2), Fraction(3 * rank, 2)
    real = [lo + (hi - lo) * Fraction(i, num_blocks - 1) for i in range(num_blocks)]
    ranks = largest_remainder(real, rank * num_blocks)
    return ranks if decay else ranks[::-1]


def gradient_ranks(gradient_norms: Sequence[float], rank: int) -> list[int]:
    """rank-gradient ranks: proportional to the norms, each >= 1, summing to rank * len(norms)."""
    norms = [_fraction(g, "gradient_norms") for g in gradient_norms]
    if not norms or sum(norms) == 0:
        raise ValueError(f"gradient_norms must not be empty nor all 0, got {list(gradient_norms)!r}")
    fixed: set[int] = set()
    while True:  # water-filling: at most len(norms) rounds, one block fixed at 1 per round or more
        free = [i for i in range(len(norms)) if i not in fixed]
        share = sum(norms[i] for i in free)
        left = rank * len(norms) - len(fixed)
        low = [i for i in free if share == 0 or left * norms[i] / share < 1]
        if not low:
            break
        fixed.update(low)
    quotas = [Fraction(1) if i in fixed else left * norms[i] / share for i in range(len(norms))]
    return largest_remainder(quotas, rank * len(norms))


def _group(name: str) -> str | None:
    """The group of a linear (path inside a block) by its parents: "attention", "ffn" or None."""
    parents = [part.lower() for part in name.split(".")[:-1]]
    if any(key in part for part in parents for key in _ATTENTION):
        return "attention"
    if any(key in part for part in parents for key in _FFN):
        return "ffn"
    return None


def focus_ranks(structure: ModelStructure, rank: int, focus: str, *, matched: bool = False) -> dict[str, int]:
    """Per-linear ranks of rank-attn-focus (``focus="attention"``) or rank-ffn-focus (``"ffn"``):
    the focused group at r, the other at r/2; ``matched``: their budget-matched variants."""
    sizes = {"attention": 0, "ffn": 0}
    for info in structure.linears:
        group = _group(info.name)
        if group is not None:
            sizes[group] += info.in_features + info.out_features
    if not all(sizes.values()):
        name = f"rank-{'attn' if focus == 'attention' else 'ffn'}-focus{'-matched' if matched else ''}"
        raise ValueError(
            f"{name} needs attention and FFN linears "
            f"(parents named attn/attention and mlp/ffn/feed_forward), got {list(structure.linear_names)}"
        )
    other = "ffn" if focus == "attention" else "attention"
    if matched:
        budget = rank * (sizes[focus] + sizes[other])
        focused = min(2 * rank, budget // sizes[focus])
        rest = (budget - focused * sizes[focus]) // sizes[other]
    else:
        focused, rest = rank, max(1, rank // 2)
    by_group = {focus: focused, other: rest}
    return {info.name: by_group.get(_group(info.name) or "", rank) for info in structure.linears}


def baseline_plan(
    name: str,
    structure: ModelStructure,
    *,
    rank: int = 16,
    bits: int = 4,
    gradient_norms: Sequence[float] | None = None,
) -> Plan:
    """The named baseline plan for ``structure`` (definitions in the module docstring).

    The plan is named ``name`` and stamped with ``structure``'s signature; group size,
    quantiser and alpha are Plan's defaults (``dataclasses.replace`` them, then
    ``Plan.validate`` against the structure).

    Args:
        name: one of ``BASELINE_PLANS``.
        structure: the model's structure.
        rank: base LoRA rank r, >= 1.
        bits: block bits of qlora and the rank-* heuristics (1..8, or 16); the names in
            ``FIXED_BITS`` ignore it.
        gradient_norms: per-block gradient norms (one per block, finite, >= 0, not all 0);
            needed by rank-gradient only.

    Returns:
        A block plan, or a module plan for the rank-*-focus heuristics.

    Raises:
        ValueError: on an unknown name (or a training method's name), rank < 1, bits
            outside 1..8 and 16, gradient norms missing, of the wrong length or invalid
            for rank-gradient, or given for another baseline.
    """
    check_baseline_name(name)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    check_bits(bits)
    if gradient_norms is not None and name != "rank-gradient":
        raise ValueError(f"gradient_norms is used by rank-gradient only, not by {name!r}")
    bits = FIXED_BITS.get(name, bits)
    num_blocks = structure.num_blocks
    options = {"name": name, "model_signature": structure.signature}
    if name in ("lora16", "qlora", "qlora-4", "qlora-3", "qlora-2"):
        return Plan.uniform(num_blocks, bits, rank, **options)
    if name == "embed8-body4":
        return Plan.uniform(num_blocks, bits, rank, embed_bits=8, head_bits=8, **options)
    if name in ("rank-linear-decay", "rank-linear-growth"):
        ranks = linear_ranks(num_blocks, rank, decay=name == "rank-linear-decay")
        return Plan.from_lists([bits] * num_blocks, ranks, **options)
    if name.startswith("rank-") and "-focus" in name:
        focus = "attention" if name.startswith("rank-attn") else "ffn"
        per_linear = focus_ranks(structure, rank, focus, matched=name.endswith("-matched"))
        layers = {
            f"{block}.{linear}": LayerSpec(bits, r)
            for block in range(num_blocks)
            for linear, r in per_linear.items()
        }
        return Plan(layers, num_blocks, **options)
    assert name == "rank-gradient"
    if gradient_norms is None:
        raise ValueError(
            "rank-gradient needs gradient_norms, one per block: measure them with the probe "
            "qradaptor.train.probe.gradient_norms (or run `qra plan --baseline rank-gradient`)"
        )
    if len(gradient_norms) != num_blocks:
        raise ValueError(
            f"gradient_norms must have one entry per block ({num_blocks}), got {len(gradient_norms)}"
        )
    return Plan.from_lists([bits] * num_blocks, gradient_ranks(gradient_norms, rank), **options)
