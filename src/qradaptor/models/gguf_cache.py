"""The dequantised cache of GGUF files: each GGUF becomes a plain fp32 checkpoint once.

transformers dequantizes a GGUF on load (~30 s) into a model ``save_pretrained`` refuses
to write, so we dequantize once into a plain fp32 checkpoint under ``$QRADAPTOR_CACHE``
(default ``~/.cache/qradaptor``), keyed by the GGUF's resolved path, size and mtime, and load
that afterwards (under a second). The folder is built in a temporary sibling and renamed into
place: a crash never leaves a half-written checkpoint that a later run would pick up. One
process builds it at a time (a lock under ``locks/``): the others wait, then read its folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.models.pretrained import from_pretrained, read_config, read_tokenizer
from qradaptor.models.sources import ResolvedSource

if TYPE_CHECKING:
    import torch

# Bump when the layout of a cached checkpoint changes, so old folders are not reused
# (2: a GGUF's two equal copies of a tied embedding are tied; qradaptor_source.json says so).
_CACHE_FORMAT = 2
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
_STALE_TEMP_S = 3600.0


def cache_dir() -> Path:
    """Root of qradaptor's cache: ``$QRADAPTOR_CACHE`` or ``~/.cache/qradaptor``."""
    return Path(os.environ.get("QRADAPTOR_CACHE") or "~/.cache/qradaptor").expanduser()


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
        with _build_lock(final):
            if not _is_complete(final):  # built by the process this one waited for
                _build_checkpoint(gguf, final)
    return final


@contextlib.contextmanager
def _build_lock(final: Path) -> Iterator[None]:
    """Holds ``locks/<folder>.lock`` exclusively, waiting while another process holds it.

    ``qra experiment --jobs N`` on a fresh machine starts N children that each need the
    checkpoint: without the lock each dequantizes the same GGUF, N times the CPU time and N
    fp32 copies in memory at once (for a 7B GGUF, 28 GB each). ``flock`` is dropped by the
    kernel when its holder dies, so a killed build never blocks the next one. The lock files
    live outside ``gguf/`` so that folder holds only checkpoints (and a build's temp sibling).
    """
    import fcntl

    locks = final.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{final.name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why nothing happens for a while, then wait
            print(f"waiting for another process to finish {final}", file=sys.stderr, flush=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}\0{_CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{digest}"


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _CACHE_FILES)


def checkpoint_for(resolved: ResolvedSource, *, build: bool) -> str:
    """Where from_pretrained should read; for a GGUF without cache, the file itself."""
    if resolved.origin not in ("embedded", "gguf"):
        return resolved.source
    gguf = Path(resolved.source)
    if build:
        return str(dequantized_checkpoint(gguf))
    folder = _cache_folder(gguf)
    return str(folder) if _is_complete(folder) else str(gguf)


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
            # Another process renamed its copy in first (only one that built without the lock:
            # an older qradaptor, or a file system whose flock excludes nothing); it is
            # equivalent to ours.
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
    config = read_config(str(gguf), resolved)
    tokenizer = read_tokenizer(str(gguf), resolved)
    model = from_pretrained(AutoModelForCausalLM, str(gguf), resolved, config=config, dtype=torch.float32)
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
