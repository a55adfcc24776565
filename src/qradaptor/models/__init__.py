"""Model loading: hub ids, local directories and GGUF files (dequantized once, then cached)."""

from __future__ import annotations

from qradaptor.models.loading import (
    ACCEPTED,
    LoadedModel,
    ResolvedSource,
    cache_dir,
    dequantized_checkpoint,
    embedded_gguf_path,
    load_config,
    load_model,
    load_tokenizer,
    resolve_source,
)

__all__ = [
    "ACCEPTED",
    "LoadedModel",
    "ResolvedSource",
    "cache_dir",
    "dequantized_checkpoint",
    "embedded_gguf_path",
    "load_config",
    "load_model",
    "load_tokenizer",
    "resolve_source",
]
