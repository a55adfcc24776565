"""transformers' ``from_pretrained`` for a resolved source, every failure one ValueError that
names the source and what went wrong (an unreachable hub id, a damaged GGUF, an architecture
transformers cannot read from GGUF, a model that is no causal LM).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.models.sources import ACCEPTED, ResolvedSource

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


def _gguf_kwargs(checkpoint: str) -> dict[str, Any]:
    """from_pretrained arguments: a .gguf is read as (folder, gguf_file=name)."""
    path = Path(checkpoint)
    if path.suffix.lower() == ".gguf":
        return {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    return {"pretrained_model_name_or_path": checkpoint}


def from_pretrained(auto: Any, checkpoint: str, resolved: ResolvedSource, **kwargs: Any) -> Any:
    """Call ``auto.from_pretrained``, turning hub and format failures into one ValueError."""
    try:
        return auto.from_pretrained(**_gguf_kwargs(checkpoint), **kwargs)
    except OSError as err:
        if resolved.origin == "hub":
            raise ValueError(
                f"model source {resolved.source!r} is not a local path and could not be loaded "
                f"as a hub id ({_first_line(err)}); expected {ACCEPTED}"
            ) from err
        raise ValueError(
            f"could not read a model from {checkpoint!r} ({_first_line(err)}); expected {ACCEPTED}"
        ) from err
    except ValueError as err:
        if checkpoint.lower().endswith(".gguf"):
            raise _gguf_error(Path(checkpoint), err) from err
        raise ValueError(
            f"could not load model source {resolved.source!r} ({_first_line(err)}); expected {ACCEPTED}"
        ) from err
    except Exception as err:
        # A truncated or damaged GGUF fails deep in its reader with struct.error, IndexError,
        # EOFError...: name the file and the fault instead of showing a traceback.
        if checkpoint.lower().endswith(".gguf"):
            raise _gguf_error(Path(checkpoint), err) from err
        raise


def read_config(checkpoint: str, resolved: ResolvedSource) -> PretrainedConfig:
    """The config at ``checkpoint``; ValueError unless it is a causal LM's."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = from_pretrained(AutoConfig, checkpoint, resolved)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"model source {resolved.source!r} has model_type {config.model_type!r}, which has "
            f"no causal-LM class in transformers; a causal LM (e.g. llama, qwen2, gpt2) is required"
        )
    return config


def read_tokenizer(checkpoint: str, resolved: ResolvedSource) -> PreTrainedTokenizerBase:
    """The tokenizer at ``checkpoint``, ``pad_token`` falling back to ``eos_token``."""
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, checkpoint, resolved)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _gguf_error(path: Path, err: BaseException) -> ValueError:
    """Explain why transformers could not read a GGUF: not a GGUF, or an unsupported arch."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        field = GGUFReader(path).fields.get("general.architecture")
        architecture = field.contents() if field is not None else None
    except Exception as read_err:  # noqa: BLE001 - the reader fails many ways on a damaged file
        return ValueError(
            f"model source {str(path)!r} is not a readable GGUF file: damaged or truncated? "
            f"({_first_line(read_err)}); expected {ACCEPTED}"
        )
    if "not supported" not in str(err):
        return ValueError(
            f"could not load GGUF file {str(path)!r} (architecture {architecture!r}): {_first_line(err)}"
        )
    supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
    return ValueError(
        f"GGUF file {str(path)!r} has architecture {architecture!r}, which transformers cannot "
        f"load from GGUF ({_first_line(err)}); supported GGUF architectures: {supported}"
    )
