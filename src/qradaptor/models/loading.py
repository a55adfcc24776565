"""Load a causal language model and its tokenizer from whatever the user names.

The source is classified by ``models/sources.py``; a GGUF is read through its dequantised
checkpoint in ``models/gguf_cache.py``; ``models/pretrained.py`` calls transformers and turns
every failure into one error naming the source.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.models.gguf_cache import checkpoint_for
from qradaptor.models.pretrained import from_pretrained, read_config, read_tokenizer
from qradaptor.models.sources import ResolvedSource, resolve_source

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for inference, with the tokenizer that goes with it."""

    model: PreTrainedModel
    """The model, in eval mode, on the requested device and dtype."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer; ``pad_token`` is set to ``eos_token`` when the checkpoint has none."""
    source: str
    """What the user gave, resolved: an absolute path for local sources, else the hub id."""
    origin: str
    """One of ``"embedded"``, ``"gguf"``, ``"directory"``, ``"hub"``."""
    checkpoint: str
    """What ``from_pretrained`` actually read: the dequantized cache folder for a GGUF."""


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a causal LM and its tokenizer; GGUF files go through the dequantized cache.

    Args:
        source: See :func:`resolve_source`; ``None`` loads the embedded SmolLM2-135M-Instruct.
        dtype: Parameter dtype; ``None`` means ``torch.float32``.
        device: Where to put the model, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        The model in eval mode, its tokenizer, and where they came from.

    Raises:
        ValueError: For any source that cannot be loaded as a causal LM (missing path, hub id
            not reachable, unreadable GGUF, GGUF architecture transformers cannot load, model
            without a language-model head), or an invalid ``dtype``/``device``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device such as 'cpu'; got {device!r}") from err

    resolved = resolve_source(source)
    checkpoint = checkpoint_for(resolved, build=True)
    config = read_config(checkpoint, resolved)
    model = from_pretrained(AutoModelForCausalLM, checkpoint, resolved, config=config, dtype=dtype)
    if model.get_output_embeddings() is None:
        raise ValueError(
            f"model source {resolved.source!r} has no language-model head "
            f"({type(model).__name__}); a causal LM is required"
        )
    model = model.to(target).eval()
    _warn_two_heads(checkpoint, resolved)
    tokenizer = read_tokenizer(checkpoint, resolved)
    return LoadedModel(model, tokenizer, resolved.source, resolved.origin, checkpoint)


def _warn_two_heads(checkpoint: str, resolved: ResolvedSource) -> None:
    """A GGUF that stores its embedding and head apart gets a warning line at every load."""
    import warnings

    if resolved.origin not in ("embedded", "gguf"):
        return
    try:
        note = json.loads((Path(checkpoint) / "qradaptor_source.json").read_text()).get("heads_note")
    except (OSError, ValueError, AttributeError):
        return
    if note:
        warnings.warn(f"{resolved.source}: {note}", UserWarning, stacklevel=3)


def load_config(source: str | os.PathLike[str] | None = None) -> PretrainedConfig:
    """Read a model's config without building its weights (for memory estimates).

    For a GGUF this reads the cached checkpoint if there is one, else the GGUF header
    (a few seconds) without dequantizing anything, except that a file storing its embedding
    and head apart has the two compared, so the config ties them as :func:`load_model` will.

    Args:
        source: See :func:`resolve_source`.

    Returns:
        The config of a causal LM.

    Raises:
        ValueError: As for :func:`load_model`.
    """
    resolved = resolve_source(source)
    checkpoint = checkpoint_for(resolved, build=False)
    config = read_config(checkpoint, resolved)
    if checkpoint.lower().endswith(".gguf") and not config.tie_word_embeddings:
        from qradaptor.models.provenance import gguf_provenance

        config.tie_word_embeddings = gguf_provenance(checkpoint).embeddings == "tied on load"
    return config


def load_tokenizer(source: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a model source, with ``pad_token`` set.

    Args:
        source: See :func:`resolve_source`.

    Returns:
        The tokenizer; ``pad_token`` falls back to ``eos_token``.

    Raises:
        ValueError: As for :func:`load_model`.
    """
    resolved = resolve_source(source)
    return read_tokenizer(checkpoint_for(resolved, build=False), resolved)
