"""Assemble the model a run describes: a base model, quantised per plan, with or without a saved adapter.

``qra eval`` (and later training's reload) use this so that what is evaluated is exactly
what was planned and trained: the same quantisation of the same base, and an adapter whose
modules and ranks match the plan. A mismatch is an error, not a silent partial load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qradaptor.plan import UNQUANTIZED, Plan


@dataclass(frozen=True)
class AssembledModel:
    """A model ready to evaluate, and what it is made of."""

    model: Any
    """The (quantised, possibly PEFT-wrapped) model, in eval mode."""
    tokenizer: Any
    """Its tokenizer (pad token set)."""
    source: str
    """The model source as resolved."""
    plan: Plan
    """The plan it was built with (uniform 16-bit, rank 0 when none was given)."""
    adapter: str | None
    """The adapter folder, if one was loaded."""


def read_adapter_ranks(adapter_dir: str | Path) -> dict[str, int]:
    """Module path -> rank of a saved PEFT LoRA adapter (from its adapter_config.json).

    Raises:
        ValueError: if the folder or its config is missing or it is not a LoRA adapter.
    """
    folder = Path(adapter_dir).expanduser()
    config_path = folder / "adapter_config.json"
    if not folder.is_dir():
        raise ValueError(f"adapter folder {str(adapter_dir)!r} does not exist")
    if not config_path.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"adapter folder {str(adapter_dir)!r} is not a PEFT adapter: it needs adapter_config.json "
            "and adapter_model.safetensors"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        kind = config.get("peft_type")
        raise ValueError(f"adapter {str(adapter_dir)!r} is a {kind} adapter; only LORA is supported")
    pattern = dict(config.get("rank_pattern") or {})
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise ValueError(
            f"adapter {str(adapter_dir)!r} names its target modules by a regex ({targets!r}); "
            "qradaptor needs explicit module names (adapters saved by qradaptor have them)"
        )
    return {name: int(pattern.get(name, config["r"])) for name in targets}


def check_adapter_matches(plan: Plan, structure: Any, ranks: dict[str, int], adapter_dir: str) -> None:
    """Raises ValueError unless the adapter's modules and ranks are the plan's."""
    expected = plan.to_rank_pattern(structure)
    if ranks != expected:
        missing = sorted(set(expected) - set(ranks))[:3]
        extra = sorted(set(ranks) - set(expected))[:3]
        differ = sorted(k for k in set(ranks) & set(expected) if ranks[k] != expected[k])[:3]
        raise ValueError(
            f"adapter {adapter_dir!r} does not match plan {plan.name or plan.plan_hash}: "
            f"{len(ranks)} adapted modules vs {len(expected)} in the plan"
            + (f"; missing e.g. {missing}" if missing else "")
            + (f"; not in the plan e.g. {extra}" if extra else "")
            + (f"; other rank e.g. {[(k, ranks[k], expected[k]) for k in differ]}" if differ else "")
        )


def assemble(
    source: str | None = None,
    plan: Plan | None = None,
    adapter: str | None = None,
    *,
    dtype: Any = None,
    device: str = "cpu",
) -> AssembledModel:
    """Loads ``source``, quantises it per ``plan`` and loads ``adapter`` onto it.

    Without a plan the base stays as loaded; with an adapter and no plan, the plan is the
    adapter's ranks on the unquantised base.

    Raises:
        ValueError: on an unknown model, a plan for another model, or an adapter that does
            not match the plan or model.
    """
    from qradaptor.build import quantize_model_
    from qradaptor.models.loading import load_model
    from qradaptor.models.structure import inspect_model

    ranks = read_adapter_ranks(adapter) if adapter else None
    loaded = load_model(source, dtype=dtype, device=device)
    structure = inspect_model(loaded.model)
    if plan is None:
        plan = (
            Plan.from_rank_pattern(ranks, structure, bits=UNQUANTIZED, name="adapter-on-16bit")
            if ranks
            else Plan.uniform(structure.num_blocks, UNQUANTIZED, 0, name="base")
        )
    plan.validate(structure)
    model = loaded.model
    quantize_model_(model, plan)
    if ranks is not None:
        from peft import PeftModel

        from qradaptor.lora import lora_config

        check_adapter_matches(plan, structure, ranks, str(adapter))
        config = lora_config(plan, structure)
        model = PeftModel.from_pretrained(model, str(adapter), config=config)
    model.eval()
    return AssembledModel(model, loaded.tokenizer, loaded.source, plan, str(adapter) if adapter else None)
