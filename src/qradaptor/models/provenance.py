"""What a model's weights really are, read from its files: the label every result carries.

Our "16-bit" base is whatever the source stores, upcast. For a GGUF that is its tensors
dequantised, so a Q4_K_M file's "16-bit" base is already a 4-bit model; for a safetensors
checkpoint it is its dtype. :func:`read_provenance` reads this cheaply (headers only, no
weights) and says it in one sentence, which ``qra eval`` and ``qra train`` write into
eval.json and train.json and ``qra experiment`` into its results tables.

It also says how the input embedding and the output head are stored. A GGUF that stores
both ``token_embd`` and ``output`` is loaded untied by transformers; when the two are equal
within the file's quantisation (a tied model written out twice) ``models.loading`` ties them
again, otherwise both are kept and the second copy's memory is shown.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qradaptor.models.gguf_header import GGUFHeader, precision_bits, read_header, read_tensor

EMBED, HEAD = "token_embd.weight", "output.weight"
"""GGUF names of the input embedding and the output head."""
TIE_LIMIT = 0.5
"""Above this tolerance the quantisation is too coarse to tell a copy from a different head."""


@dataclass(frozen=True)
class HeadCheck:
    """How a GGUF's separately stored embedding and head compare, dequantised."""

    embed_type: str
    """GGML type of ``token_embd.weight``."""
    head_type: str
    """GGML type of ``output.weight``."""
    shape: tuple[int, ...]
    """The head's shape (vocab, hidden)."""
    rel_diff: float | None
    """||E - H|| / ||E|| (Frobenius); None when the shapes differ or a type cannot be dequantised."""
    tolerance: float
    """What the two types' rounding can explain: 4 / 2**bits each, summed (bits per weight for a
    quant, significand bits for a float), about twice the measured error of the legacy quants."""

    @property
    def equal(self) -> bool:
        """Whether the head is the embedding within the file's quantisation (so the model is tied)."""
        return self.rel_diff is not None and self.tolerance < TIE_LIMIT and self.rel_diff <= self.tolerance

    @property
    def extra_params(self) -> int:
        """Parameters of the second copy when both are kept."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Provenance:
    """What a model source stores, read from its files."""

    format: str
    """``"gguf"``, ``"safetensors"``, ``"pytorch"`` (a .bin checkpoint, not read) or ``"unknown"``."""
    file: str | None
    """The file or folder read; None when nothing could be read."""
    tensor_types: dict[str, int] = field(default_factory=dict)
    """Tensors per stored type, most first: GGML types for a GGUF (``{"Q4_1": 210, "F32": 61}``),
    safetensors dtypes otherwise (``{"BF16": 272}``); empty when not read."""
    embeddings: str = "unknown"
    """``"tied"`` (one tensor), ``"untied"`` (two that differ, or config.json says so),
    ``"tied on load"`` (a GGUF's two equal copies, tied again by ``load_model``) or ``"unknown"``."""
    heads: HeadCheck | None = None
    """The comparison behind ``embeddings`` for a GGUF that stores both tensors."""
    text: str = ""
    """One sentence for eval.json, train.json and results tables."""

    @property
    def heads_note(self) -> str | None:
        """The sentence on a GGUF's separately stored embedding and head (tied or kept); None otherwise."""
        return None if self.heads is None else _embedding_sentence(self.embeddings, self.heads)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the head check's verdict."""
        data = asdict(self)
        if self.heads is not None:
            data["heads"]["equal"] = self.heads.equal
        return data


def read_provenance(source: str | os.PathLike[str] | None) -> Provenance:
    """Read what a model source stores without loading its weights.

    Args:
        source: As for ``models.sources.resolve_source``: None (the embedded GGUF), a ``.gguf``
            file, a model folder, or a hub id (read from the local HF cache only, never the network).

    Returns:
        The provenance; ``format="unknown"`` with a sentence saying so when nothing local can be read.

    Raises:
        ValueError: As ``resolve_source`` for a source that names nothing, or for a GGUF whose
            header cannot be read.
    """
    from qradaptor.models.sources import resolve_source

    resolved = resolve_source(source)
    if resolved.origin in ("embedded", "gguf"):
        return gguf_provenance(resolved.source)
    if resolved.origin == "directory":
        return folder_provenance(Path(resolved.source))
    folder = _hub_cache_folder(resolved.source)
    if folder is None:
        text = f"hub id {resolved.source}: not in the local cache, its stored dtype is unknown"
        return Provenance("unknown", None, text=text)
    found = folder_provenance(folder)
    return replace(found, text=f"hub id {resolved.source} (local cache): {found.text}")


def gguf_provenance(path: str | os.PathLike[str]) -> Provenance:
    """Tensor types of a GGUF, and whether its embedding and head are one tensor, two copies, or two.

    Args:
        path: A ``.gguf`` file.

    Returns:
        Its provenance; comparing two stored heads reads and dequantises both (a second or so).

    Raises:
        ValueError: If the header cannot be read.
    """
    path = Path(path)
    try:
        header = read_header(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not read the GGUF header of {str(path)!r}: {err}") from err
    types = _most_first(Counter(t.type_name for t in header.tensors))
    parts = [f"{path.name} stores {len(header.tensors)} tensors ({_counts(types)})"]
    if any(_is_quant(name) for name in types):
        parts.append('its "16-bit" base is these dequantised, not the original checkpoint')
    else:
        parts.append("none is quantised")
    embeddings, heads = _gguf_embeddings(path, header)
    parts.append(_embedding_sentence(embeddings, heads))
    return Provenance("gguf", str(path), types, embeddings, heads, "; ".join(parts))


def folder_provenance(folder: Path) -> Provenance:
    """Dtypes of a model folder's safetensors (headers only) and its config's dtype and tie.

    A folder that ``models.loading`` dequantised from a GGUF says so and reports the GGUF.

    Args:
        folder: A folder with config.json and ``*.safetensors`` or ``pytorch_model*.bin``.

    Returns:
        Its provenance.
    """
    config = _read_json(folder / "config.json")
    origin = _read_json(folder / "qradaptor_source.json")
    if origin.get("gguf") and Path(origin["gguf"]).is_file():
        found = gguf_provenance(origin["gguf"])
        return replace(found, file=str(folder), text=f"dequantised to float32 from {found.text}")
    shards = sorted(folder.glob("*.safetensors"))
    types = _most_first(Counter(dtype for shard in shards for dtype in _safetensors_dtypes(shard)))
    dtype = config.get("torch_dtype") or config.get("dtype")
    said = f"config.json dtype {dtype}" if dtype else "config.json names no dtype"
    quantization = config.get("quantization_config")
    quant = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if quant:
        said += f", pre-quantised ({quant})"
    tie = config.get("tie_word_embeddings")
    embeddings = "unknown" if tie is None else ("tied" if tie else "untied")
    if shards:
        fmt = "safetensors"
        stored = f"{sum(types.values())} tensors ({_counts(types)})"
        files = f"{shards[0].name} stores" if len(shards) == 1 else f"{len(shards)} safetensors shards store"
        text = f"{files} {stored}; {said}"
    elif any(folder.glob("pytorch_model*.bin")):
        fmt, text = "pytorch", f"pytorch_model .bin weights (not read); {said}"
    else:
        fmt, text = "unknown", f"no weight files found; {said}"
    if embeddings != "unknown":
        text += f"; embedding and head {embeddings} (config.json tie_word_embeddings)"
    return Provenance(fmt, str(folder), types, embeddings, None, text)


def tie_stored_copies_(model: Any, heads: HeadCheck) -> None:
    """Tie a loaded model's head to its embedding in place, keeping the more precise stored copy.

    For a GGUF whose ``heads.equal``: the two tensors are one tied weight written twice, so one
    parameter serves both, as ``tie_word_embeddings`` would have made it.

    Args:
        model: A transformers causal LM loaded from that GGUF (untied).
        heads: The file's :class:`HeadCheck`.
    """
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if precision_bits(heads.head_type) > precision_bits(heads.embed_type):
        embed.weight.data.copy_(head.weight.data)  # the head's copy lost less to rounding
    head.weight = embed.weight
    model.config.tie_word_embeddings = True


def _gguf_embeddings(path: Path, header: GGUFHeader) -> tuple[str, HeadCheck | None]:
    embed, head = header.tensor(EMBED), header.tensor(HEAD)
    if head is None:
        return ("tied" if embed is not None else "unknown"), None
    if embed is None:
        return "untied", None
    tolerance = sum(4.0 / 2 ** precision_bits(t.type_name) for t in (embed, head))
    rel_diff = None
    if embed.shape == head.shape:
        try:
            import numpy as np

            e, h = read_tensor(path, embed), read_tensor(path, head)
            rel_diff = float(np.linalg.norm(e - h) / max(float(np.linalg.norm(e)), 1e-30))
        except ValueError:
            rel_diff = None
    check = HeadCheck(embed.type_name, head.type_name, head.shape, rel_diff, tolerance)
    return ("tied on load" if check.equal else "untied"), check


def _embedding_sentence(embeddings: str, heads: HeadCheck | None) -> str:
    if heads is None:
        if embeddings == "tied":
            return "embedding and head tied (one tensor)"
        return f"{HEAD} without {EMBED}" if embeddings == "untied" else f"neither {EMBED} nor {HEAD} found"
    diff = "shapes differ" if heads.rel_diff is None else f"relative difference {heads.rel_diff:.3g}"
    stored = f"embedding ({heads.embed_type}) and head ({heads.head_type}) stored separately ({diff}"
    if heads.equal:
        return f"{stored}, within their quantisation's {heads.tolerance:.3g}): tied on load"
    mib = heads.extra_params * 2 / 2**20
    return (
        f"{stored}; their quantisation explains {heads.tolerance:.3g}): kept untied, the head "
        f"adds {heads.extra_params:,} parameters ({mib:,.1f} MiB in 16-bit)"
    )


def _is_quant(type_name: str) -> bool:
    return type_name not in ("F32", "F16", "BF16", "F64")


def _most_first(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _counts(types: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in types.items()) or "none"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _safetensors_dtypes(path: Path) -> list[str]:
    """Each tensor's dtype from a safetensors header (a u64 length, then that much JSON)."""
    try:
        with path.open("rb") as handle:
            (n,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(n))
    except (OSError, ValueError, struct.error):
        return []
    return [v["dtype"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The locally cached snapshot of a hub model (its config.json's folder), never the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None
