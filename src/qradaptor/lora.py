"""PEFT adapters on our packed layers (LoRA, DoRA, AdaLoRA) and the configs a plan turns into.

PEFT wraps ``nn.Linear`` itself; for ``QuantLinear`` we give it three layers of its own:

``LoraQuantLinear``
    PEFT's ``lora.Linear``, registered through PEFT's custom-module mapping. It reads
    in/out sizes from the QuantLinear and never merges into the packed codes (a merge would
    re-quantise the adapter away; merge into a dequantised copy instead when exporting).
``DoraQuantLayer``
    DoRA's magnitude vector for a LoraQuantLinear. PEFT's DoRA reads the base weight through
    ``dequantize_module_weight``, which knows bitsandbytes, HQQ and torchao but not us; this
    subclass reads ``QuantLinear.dequantized_weight()`` instead (so QuantLinear needs no fake
    ``weight``). The maths are PEFT's, line for line (DoRA, Liu et al. 2024, Eq. 5 and §4.3).
``AdaLoraQuantLinear``
    PEFT's ``SVDLinear`` over a QuantLinear. PEFT 0.21's AdaLoraModel has no custom-module
    mapping (it builds SVD layers only for nn.Linear, Conv1D, Conv2d, bnb and GPTQ), so
    ``prepare_adalora_`` wraps the QuantLinears in adapter-less AdaLoraQuantLinears first;
    PEFT then adds its adapter through ``update_layer``, its own path for a layer that is
    already an AdaLoRA layer.

Every adapter saved is an ordinary PEFT adapter: the same keys and shapes as on the 16-bit
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch.nn.functional as F
from peft.tuners.adalora.layer import AdaLoraLayer, SVDLinear
from peft.tuners.lora.dora import DoraLinearLayer
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.variants import DoraLinearVariant
from torch import nn

from qradaptor.quant.modules import QuantLinear

if TYPE_CHECKING:
    from peft import AdaLoraConfig, LoraConfig

    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan

AdapterKind = Literal["lora", "dora", "adalora"]
AdapterInit = Literal["default", "loftq"]


@dataclass(frozen=True)
class AdapterVariant:
    """Which adapter the trainer fits on the quantised base, and how it starts.

    ``lora`` is plain LoRA; ``dora`` adds DoRA's magnitude vectors (QDoRA on a quantised
    base); ``adalora`` is AdaLoRA (SVD-form adapters whose ranks are pruned during training
    from ``adalora_init_r`` down to an average of ``adalora_target_r``). ``init="loftq"``
    starts the codes and the adapters from LoftQ (``qradaptor.loftq``).

    AdaLoRA's schedule: ``tinit`` warm-up steps at the full rank, then the budget shrinks
    cubically until step ``total - tfinal``, then ``tfinal`` steps at the final ranks; the
    ranks are reallocated every ``delta_t`` steps. The three are given as fractions of
    ``adalora_total_steps`` (see ``adalora_schedule``).
    """

    kind: AdapterKind = "lora"
    """"lora", "dora" or "adalora"."""
    init: AdapterInit = "default"
    """"default" (PEFT's init: B = 0) or "loftq" (LoftQ, lora and dora only)."""
    loftq_iters: int = 1
    """LoftQ's alternating steps T (Alg. 1); 1 already beats plain quantisation."""
    adalora_init_r: int = 24
    """AdaLoRA: rank of every adapter before pruning."""
    adalora_target_r: int = 16
    """AdaLoRA: target AVERAGE rank over the adapted modules after pruning."""
    adalora_total_steps: int | None = None
    """AdaLoRA: optimizer steps the run will take (required for adalora)."""
    adalora_tinit: float = 0.1
    """AdaLoRA: fraction of the steps trained at the full rank before pruning starts."""
    adalora_tfinal: float = 0.2
    """AdaLoRA: fraction of the steps trained at the final ranks after pruning ends."""
    adalora_delta_t: float = 0.01
    """AdaLoRA: fraction of the steps between two reallocations (at least one step)."""

    def __post_init__(self) -> None:
        if self.kind not in ("lora", "dora", "adalora"):
            raise ValueError(f"kind must be 'lora', 'dora' or 'adalora', got {self.kind!r}")
        if self.init not in ("default", "loftq"):
            raise ValueError(f"init must be 'default' or 'loftq', got {self.init!r}")
        if self.init == "loftq" and self.kind == "adalora":
            raise ValueError(
                "init='loftq' works with kind 'lora' or 'dora' only (LoftQ needs a fixed rank), "
                f"got kind={self.kind!r}"
            )
        for name in ("loftq_iters", "adalora_init_r", "adalora_target_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.adalora_target_r > self.adalora_init_r:
            raise ValueError(
                f"adalora_target_r must be <= adalora_init_r={self.adalora_init_r}, "
                f"got {self.adalora_target_r}"
            )
        for name in ("adalora_tinit", "adalora_tfinal", "adalora_delta_t"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
        total = self.adalora_total_steps
        if self.kind != "adalora":
            return
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(
                f"adalora_total_steps must be a positive integer for kind='adalora', got {total!r}"
            )
        tinit, tfinal, _ = self.adalora_schedule()
        if tinit >= total - tfinal:
            raise ValueError(
                "adalora_tinit + adalora_tfinal must leave a pruning phase (tinit < total - tfinal "
                f"in steps), got tinit={tinit}, tfinal={tfinal} of adalora_total_steps={total}"
            )

    def adalora_schedule(self) -> tuple[int, int, int]:
        """(tinit, tfinal, deltaT) in steps, as PEFT's AdaLoraConfig wants them."""
        total = self.adalora_total_steps or 0
        return (
            round(self.adalora_tinit * total),
            round(self.adalora_tfinal * total),
            max(1, round(self.adalora_delta_t * total)),
        )


class DoraQuantLayer(DoraLinearLayer):
    """DoRA's magnitude vector m for a QuantLinear base: y = m / ||W + s B A||_c (W + s B A) x.

    PEFT's ``DoraLinearLayer`` with the base weight read from the QuantLinear's codes,
    dequantised afresh in each call (never stored).
    """

    def update_layer(self, *, base_layer: QuantLinear, lora_A, lora_B, scaling, place_on_cpu=False) -> None:
        # m starts at the column norms of W + s B A (B A = 0 unless LoftQ set it).
        weight = base_layer.dequantized_weight(lora_A.dtype).to(lora_A.device)  # (out, in)
        norm = self.get_weight_norm(weight=weight, lora_weight=lora_B @ lora_A, scaling=scaling)
        self.weight = nn.Parameter(norm.to("cpu") if place_on_cpu else norm, requires_grad=True)

    def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
        lora_weight = self.get_lora_weight(lora_A=lora_A, lora_B=lora_B, adapter_name=adapter_name)
        weight = base_layer.dequantized_weight(x.dtype)  # (out, in)
        weight_norm = self.get_weight_norm(
            weight=weight,
            lora_weight=lora_weight.to(x.dtype).detach(),
            scaling=scaling,
            adapter_name=adapter_name,
        )
        # DoRA §4.3: the norm is treated as a constant (no gradient through it).
        mag_norm_scale = (self.weight / weight_norm.detach()).view(1, -1)
        lora_result = lora_B(lora_A(x))
        if base_result is None:  # dropout on: the base output must see the same x
            base_result = F.linear(x, weight)
        elif base_layer.bias is not None:
            base_result = base_result - base_layer.bias
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


class DoraQuantVariant(DoraLinearVariant):
    """PEFT's DoRA variant, building a ``DoraQuantLayer`` (PEFT's forward is reused)."""

    @staticmethod
    def init(module: LoraQuantLinear, adapter_name: str, **kwargs: Any) -> None:
        if not module.lora_magnitude_vector:
            module.adapter_layer_names = module.adapter_layer_names[:] + ("lora_magnitude_vector",)
        dora = DoraQuantLayer(fan_in_fan_out=False)
        dora.update_layer(
            base_layer=module.get_base_layer(),
            lora_A=module.lora_A[adapter_name].weight,
            lora_B=module.lora_B[adapter_name].weight,
            scaling=module.scaling[adapter_name],
        )
        module.lora_magnitude_vector[adapter_name] = dora


_NO_MERGE = (
    "merging an adapter into packed k-bit codes would quantise the adapter away; "
    "build the model with a 16-bit base (or dequantise) and merge there"
)


class LoraQuantLinear(PeftLoraLinear):
    """PEFT LoRA around a QuantLinear: y = dequant(Q) x + (alpha / r) B A x (DoRA too)."""

    def __init__(self, base_layer: QuantLinear, adapter_name: str, config: LoraConfig, **kwargs):
        kwargs.pop("fan_in_fan_out", None)  # a QuantLinear is always (out, in)
        super().__init__(base_layer, adapter_name, config, **kwargs)
        self.fan_in_fan_out = False

    @property
    def lora_variants(self):
        # Only the variants we support on packed codes; PEFT's would read `base_layer.weight`.
        return {(): None, ("use_dora",): DoraQuantVariant}

    def _get_in_out_features(self, module: QuantLinear) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(_NO_MERGE)

    def unmerge(self) -> None:
        raise NotImplementedError("LoRA on a QuantLinear is never merged, so there is nothing to unmerge")


class AdaLoraQuantLinear(SVDLinear):
    """PEFT AdaLoRA around a QuantLinear: y = dequant(Q) x + (alpha / r_t) B (E * A) x.

    Made adapter-less by ``prepare_adalora_``; PEFT's AdaLoraModel then adds the adapter with
    ``update_layer`` (and prunes it through ``lora_E``). The forward is SVDLinear's.
    """

    def __init__(self, base_layer: QuantLinear) -> None:
        # Not SVDLinear.__init__: it freezes `base_layer.weight`, which a QuantLinear lacks
        # (its codes are buffers, frozen by construction).
        nn.Module.__init__(self)
        AdaLoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False

    def _get_in_out_features(self, module: QuantLinear) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(_NO_MERGE)

    def unmerge(self) -> None:
        raise NotImplementedError("AdaLoRA on a QuantLinear is never merged, so there is nothing to unmerge")


def prepare_adalora_(model: nn.Module, paths: list[str]) -> None:
    """Wraps each QuantLinear at ``paths`` in an adapter-less ``AdaLoraQuantLinear``, in place.

    Call it before ``get_peft_model`` with an AdaLoraConfig, and before
    ``PeftModel.from_pretrained`` of a saved AdaLoRA adapter; other modules are left alone
    (PEFT's AdaLoRA wraps dense linears itself).
    """
    for path in paths:
        module = model.get_submodule(path)
        if isinstance(module, QuantLinear):
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, AdaLoraQuantLinear(module))


def lora_config(
    plan: Plan, structure: ModelStructure, *, dropout: float = 0.0, use_dora: bool = False
) -> LoraConfig | None:
    """The PEFT LoraConfig for ``plan``'s ranks; None when every rank is 0.

    Every adapted module is named in ``target_modules`` and ``rank_pattern`` by its full
    path, so the saved ``adapter_config.json`` alone says each module's rank; one
    ``lora_alpha`` for all gives the paper's scaling alpha / r_l (Eq. 4). ``use_dora``
    makes every adapter DoRA (QDoRA on the quantised modules).
    """
    from peft import LoraConfig

    ranks = plan.to_rank_pattern(structure)
    if not ranks:
        return None
    values = sorted(ranks.values())
    config = LoraConfig(
        r=values[len(values) // 2],
        lora_alpha=plan.alpha,
        lora_dropout=dropout,
        target_modules=sorted(ranks),
        rank_pattern=dict(ranks),
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=use_dora,
    )
    config._register_custom_module({QuantLinear: LoraQuantLinear})
    return config


def adalora_config(
    plan: Plan, structure: ModelStructure, variant: AdapterVariant, *, dropout: float = 0.0
) -> AdaLoraConfig | None:
    """The PEFT AdaLoraConfig for ``plan``'s adapted modules; None when every rank is 0.

    AdaLoRA gives every adapted module the same initial rank ``variant.adalora_init_r`` and
    prunes to an average of ``variant.adalora_target_r``, so the plan says only which modules
    are adapted (rank > 0) and at how many bits each is stored (any bits: 16-bit modules are
    PEFT's own SVD layers, quantised ones ``AdaLoraQuantLinear``); its ranks are not used.
    The scaling is alpha / r_t with r_t each module's current rank.

    Trainer contract: PEFT adds the orthogonal regulariser (weight ``orth_reg_weight``, 0.5)
    to ``outputs.loss`` itself whenever labels are given, in eval mode too (compute an eval
    loss from the logits to leave it out); after each ``optimizer.step()`` and before
    ``optimizer.zero_grad()`` (the rank allocator scores the gradients) call
    ``model.base_model.update_and_allocate(step)`` with the 0-based step. The allocation is
    in ``model.peft_config["default"].rank_pattern`` (module -> keep/drop flag per rank;
    ``adalora_kept_ranks`` reads it).

    Raises:
        ValueError: if ``variant.kind`` is not adalora.
    """
    from peft import AdaLoraConfig

    if variant.kind != "adalora":
        raise ValueError(f"variant.kind must be 'adalora' for an AdaLoraConfig, got {variant.kind!r}")
    ranks = plan.to_rank_pattern(structure)
    if not ranks:
        return None
    tinit, tfinal, delta_t = variant.adalora_schedule()
    return AdaLoraConfig(
        init_r=variant.adalora_init_r,
        target_r=variant.adalora_target_r,
        total_step=variant.adalora_total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=delta_t,
        lora_alpha=plan.alpha,
        lora_dropout=dropout,
        target_modules=sorted(ranks),
        bias="none",
        task_type="CAUSAL_LM",
    )


def adalora_kept_ranks(model: Any) -> dict[str, int]:
    """Module path -> rank an AdaLoRA model keeps now (its allocation; init_r before any pruning).

    The adapted modules are the model's AdaLoRA layers (PEFT shortens ``target_modules`` to
    last names once there are many); the allocation is ``peft_config["default"].rank_pattern``,
    keyed by parameter name (``<module>.lora_E.default``) with one keep flag per rank.

    Raises:
        ValueError: if ``model`` is not a PEFT AdaLoRA model.
    """
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or getattr(config, "peft_type", None) != "ADALORA":
        raise ValueError(f"model must be a PEFT AdaLoRA model, got {type(model).__name__}")
    inner = model.base_model.model
    kept = {
        name: int(module.lora_E["default"].shape[0])
        for name, module in inner.named_modules()
        if isinstance(module, AdaLoraLayer) and "default" in module.lora_E
    }
    for key, flags in (config.rank_pattern or {}).items():
        path = key.removesuffix(".default").removesuffix(".lora_E")
        if path not in kept:
            raise ValueError(f"AdaLoRA rank_pattern key {key!r} names no adapted module")
        kept[path] = sum(bool(f) for f in flags)
    return kept
