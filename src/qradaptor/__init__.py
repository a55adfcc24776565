"""qradaptor: per-layer bit-width and LoRA-rank allocation under a memory budget.

The public API, imported lazily so that ``import qradaptor`` stays fast (no torch)::

    from qradaptor import Plan, apply_plan, load_model, plan_memory, inspect_model

    loaded = load_model()                       # embedded SmolLM2-135M-Instruct
    plan = Plan.uniform(30, bits=4, rank=16)    # QLoRA-style: every block 4-bit, rank 16
    model = apply_plan(loaded.model, plan)      # packed 4-bit weights + PEFT LoRA adapters
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Plan": "qradaptor.plan",
    "LayerSpec": "qradaptor.plan",
    "apply_plan": "qradaptor.build",
    "quantize_model_": "qradaptor.build",
    "inspect_model": "qradaptor.models.structure",
    "structure_from_config": "qradaptor.models.structure",
    "ModelStructure": "qradaptor.models.structure",
    "load_model": "qradaptor.models.loading",
    "load_config": "qradaptor.models.loading",
    "plan_memory": "qradaptor.memory",
    "training_memory": "qradaptor.memory",
    "model_tensor_bytes": "qradaptor.memory",
    "quantize": "qradaptor.quant.quantizer",
    "dequantize": "qradaptor.quant.quantizer",
    "QuantLinear": "qradaptor.quant.modules",
    "load_texts": "qradaptor.data",
    "load_instructions": "qradaptor.data",
    "pack_texts": "qradaptor.data",
    "TrainConfig": "qradaptor.train.config",
    "DataSpec": "qradaptor.train.run",
    "train_plan": "qradaptor.train.run",
    "assemble_run": "qradaptor.runs",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qradaptor' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
