"""PEFT LoRA on our packed layers, and the LoraConfig a plan turns into.

PEFT wraps ``nn.Linear`` itself; for ``QuantLinear`` we register a LoRA layer through
PEFT's custom-module mapping. It is PEFT's own ``lora.Linear`` with three changes: it
reads in/out sizes from the QuantLinear, it never merges into the packed codes (a merge
would re-quantise the adapter away; merge into a dequantised copy instead when exporting),
and it computes in the layer's compute dtype. The adapter it saves is an ordinary PEFT
adapter: the same keys and shapes as LoRA on the 16-bit model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft.tuners.lora.layer import Linear as PeftLoraLinear

from qradaptor.quant.modules import QuantLinear

if TYPE_CHECKING:
    from peft import LoraConfig

    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan


class LoraQuantLinear(PeftLoraLinear):
    """PEFT LoRA around a QuantLinear: y = dequant(Q) x + (alpha / r) B A x."""

    def __init__(self, base_layer: QuantLinear, adapter_name: str, config: LoraConfig, **kwargs):
        kwargs.pop("fan_in_fan_out", None)  # a QuantLinear is always (out, in)
        super().__init__(base_layer, adapter_name, config, **kwargs)
        self.fan_in_fan_out = False

    def _get_in_out_features(self, module: QuantLinear) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "merging an adapter into packed k-bit codes would quantise the adapter away; "
            "build the model with a 16-bit base (or dequantise) and merge there"
        )

    def unmerge(self) -> None:
        raise NotImplementedError(
            "LoRA on a QuantLinear is never merged, so there is nothing to unmerge"
        )


def lora_config(
    plan: Plan, structure: ModelStructure, *, dropout: float = 0.0
) -> LoraConfig | None:
    """The PEFT LoraConfig for ``plan``'s ranks; None when every rank is 0.

    Every adapted module is named in ``target_modules`` and ``rank_pattern`` by its full
    path, so the saved ``adapter_config.json`` alone says each module's rank; one
    ``lora_alpha`` for all gives the paper's scaling alpha / r_l (Eq. 4).
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
    )
    config._register_custom_module({QuantLinear: LoraQuantLinear})
    return config
