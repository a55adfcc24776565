"""Training methods: the paper's baselines and the seed study's heuristics, by name.

A method is a plan (where the bits and ranks come from) plus an adapter variant and a
backend. All of them train through one loop (loop.py), so their numbers compare fairly.

=================== ================================== ======================= ===========
method              plan                               adapter                 backend
=================== ================================== ======================= ===========
lora                --plan (e.g. a searched one)       LoRA                    qradaptor
lora16              16-bit, rank r                     LoRA                    qradaptor
qlora, qlora-4/3/2  uniform b bits, rank r             LoRA                    qradaptor
qlora-nf4           4-bit NF4, double-quantised        LoRA                    bitsandbytes
                    (QLoRA's setting), rank r
qlora-nf4-nodq      4-bit NF4, fp32 absmax, rank r     LoRA                    bitsandbytes
adalora             uniform b bits (or --plan, any     AdaLoRA: every adapted  qradaptor
                    bits), average rank r              module from init_r
                                                       (1.5 r) pruned to an
                                                       average of target_r (r)
amq-lora            --plan from a bits-only search     LoRA                    qradaptor
dora / qdora        16-bit / uniform b bits (or plan)  DoRA                    qradaptor
loftq               uniform b bits (or --plan)         LoRA, LoftQ init        qradaptor
rank-*, embed8-body4  baselines.baseline_plan          LoRA                    qradaptor
=================== ================================== ======================= ===========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan

BACKENDS = ("qradaptor", "bitsandbytes")


@dataclass(frozen=True)
class Method:
    """How one named method gets its plan and trains."""

    name: str
    """The name users pass to ``--method``."""
    summary: str
    """One line for the help and the reports."""
    baseline: str | None = None
    """``baselines.baseline_plan`` name that makes the plan; None: the user's --plan."""
    adapter: str = "lora"
    """Adapter kind: lora, dora or adalora."""
    init: str = "default"
    """Adapter initialisation: default (PEFT's) or loftq."""
    backend: str = "qradaptor"
    """qradaptor (our k-bit QuantLinear) or bitsandbytes (NF4, CUDA only)."""
    double_quant: bool = False
    """bitsandbytes backend: double-quantise NF4's block absmaxes (QLoRA's setting)."""
    plan_optional: bool = False
    """True when --plan may replace the method's own plan (its bits, and ranks where LoRA)."""
    needs_plan: bool = False
    """True when the method is only defined by a given --plan (lora, amq-lora)."""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", "LoRA on the base quantised per --plan (any plan, searched or not)", needs_plan=True),
        Method("lora16", "LoRA rank r on the 16-bit base", baseline="lora16"),
        Method("qlora", "LoRA rank r on a uniform b-bit base (our quantiser)", baseline="qlora"),
        Method("qlora-4", "LoRA rank r on a uniform 4-bit base", baseline="qlora-4"),
        Method("qlora-3", "LoRA rank r on a uniform 3-bit base", baseline="qlora-3"),
        Method("qlora-2", "LoRA rank r on a uniform 2-bit base", baseline="qlora-2"),
        Method(
            "qlora-nf4",
            "QLoRA: bitsandbytes NF4 base with double quantisation, LoRA rank r (CUDA)",
            baseline="qlora-4",
            backend="bitsandbytes",
            double_quant=True,
        ),
        Method(
            "qlora-nf4-nodq",
            "bitsandbytes NF4 base without double quantisation (fp32 absmax), LoRA rank r (CUDA)",
            baseline="qlora-4",
            backend="bitsandbytes",
        ),
        Method(
            "adalora",
            "PEFT AdaLoRA pruning from init_r to an average of target_r, on a uniform b-bit base "
            "or --plan (any bits)",
            baseline="qlora",
            adapter="adalora",
            plan_optional=True,
        ),
        Method(
            "amq-lora",
            "LoRA rank 16 on a bits-only searched plan (qra search --fixed-rank 16)",
            needs_plan=True,
        ),
        Method(
            "dora",
            "PEFT DoRA rank r on the 16-bit base",
            baseline="lora16",
            adapter="dora",
            plan_optional=True,
        ),
        Method(
            "qdora",
            "PEFT DoRA rank r on a uniform b-bit base",
            baseline="qlora",
            adapter="dora",
            plan_optional=True,
        ),
        Method(
            "loftq",
            "LoRA with LoftQ initialisation on a uniform b-bit base",
            baseline="qlora",
            init="loftq",
            plan_optional=True,
        ),
        Method(
            "rank-linear-decay",
            "ranks fall linearly from 3r/2 at the top block to r/2 at block 0, same total",
            baseline="rank-linear-decay",
        ),
        Method(
            "rank-linear-growth",
            "ranks rise linearly from r/2 at the top block to 3r/2 at block 0, same total",
            baseline="rank-linear-growth",
        ),
        Method("rank-attn-focus", "attention modules at r, MLP at r/2", baseline="rank-attn-focus"),
        Method("rank-ffn-focus", "MLP modules at r, attention at r/2", baseline="rank-ffn-focus"),
        Method(
            "rank-attn-focus-matched",
            "attention modules at 2r, MLP ranks lowered to keep the uniform adapter size",
            baseline="rank-attn-focus-matched",
        ),
        Method(
            "rank-ffn-focus-matched",
            "MLP modules at up to 2r, attention lowered to keep the uniform adapter size",
            baseline="rank-ffn-focus-matched",
        ),
        Method(
            "rank-gradient",
            "ranks proportional to per-block gradient norms of a probe",
            baseline="rank-gradient",
        ),
        Method("embed8-body4", "8-bit embeddings and head, 4-bit body, rank r", baseline="embed8-body4"),
    )
}
"""Every method by name."""


def get_method(name: str) -> Method:
    """The method called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods are {', '.join(METHODS)}")
    return METHODS[name]


def method_plan(
    method: Method,
    structure: ModelStructure,
    plan: Plan | None,
    *,
    rank: int = 16,
    bits: int = 4,
    gradient_norms: list[float] | None = None,
) -> Plan:
    """The plan ``method`` trains: the given one where allowed, else the method's own.

    Raises:
        ValueError: when a plan is required and missing, given where the method defines its
            own, or (amq-lora) not a bits-only plan at one rank.
    """
    from qradaptor.baselines import baseline_plan

    if method.needs_plan:
        if plan is None:
            hint = " (make one with qra search --fixed-rank 16)" if method.name == "amq-lora" else ""
            raise ValueError(f"method {method.name} trains a given plan: pass --plan FILE{hint}")
        if method.name == "amq-lora" and len({spec.rank for spec in plan.layers.values()}) != 1:
            ranks = sorted({spec.rank for spec in plan.layers.values()})
            raise ValueError(
                f"method amq-lora needs a bits-only plan with one rank everywhere, got ranks {ranks}; "
                "search one with qra search --fixed-rank 16"
            )
        return plan
    if plan is not None:
        if not method.plan_optional:
            raise ValueError(
                f"method {method.name} defines its own plan; drop --plan "
                "(use --method lora to train a given plan, "
                "or adalora, dora, qdora, loftq which accept one)"
            )
        return plan
    assert method.baseline is not None
    return baseline_plan(method.baseline, structure, rank=rank, bits=bits, gradient_norms=gradient_norms)
