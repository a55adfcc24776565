"""Model loading: hub ids, local directories and GGUF files (dequantized once, then cached)."""

from __future__ import annotations

from qradaptor.models.gguf_cache import cache_dir, dequantized_checkpoint
from qradaptor.models.loading import LoadedModel, load_config, load_model, load_tokenizer
from qradaptor.models.sources import ACCEPTED, ResolvedSource, embedded_gguf_path, resolve_source

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
