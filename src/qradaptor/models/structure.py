"""What a model is made of, found generically: its repeated blocks and their linear layers.

A plan speaks of blocks and of linear modules inside a block ("self_attn.q_proj"); this
module finds them in any decoder: the repeated blocks are the largest ``nn.ModuleList`` of
identical modules that hold linear layers (``model.layers`` in Llama/Qwen/Mistral,
``transformer.h`` in GPT-2), and a block's linears are its ``nn.Linear`` and GPT-2-style
``Conv1D`` children. The result, a ``ModelStructure``, is all that plans and the memory
model need; it can be read off a model on the meta device, without weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

LinearKind = Literal["linear", "conv1d"]


@dataclass(frozen=True)
class LinearInfo:
    """One linear layer inside a block."""

    name: str
    """Path relative to the block, e.g. "self_attn.q_proj"."""
    in_features: int
    """Input size (the dimension quantisation groups run along)."""
    out_features: int
    """Output size."""
    bias: bool
    """Whether it has a bias (kept at 16 bits)."""
    kind: LinearKind
    """"linear" (nn.Linear, weight (out, in)) or "conv1d" (GPT-2 Conv1D, weight (in, out))."""

    @property
    def numel(self) -> int:
        """Number of weights (bias excluded)."""
        return self.in_features * self.out_features


@dataclass(frozen=True)
class ModelStructure:
    """The parts of a causal LM that a plan allocates bits and ranks to."""

    blocks_path: str
    """Dotted path of the block list, e.g. "model.layers"."""
    num_blocks: int
    """Number of repeated blocks."""
    linears: tuple[LinearInfo, ...]
    """The linear layers of one block, in module order (every block has the same)."""
    embed_path: str
    """Dotted path of the input embedding."""
    embed_shape: tuple[int, int]
    """(vocab, hidden) of the input embedding."""
    head_path: str | None
    """Dotted path of the output head, None if the model has none."""
    head_shape: tuple[int, int] | None
    """(vocab, hidden) of the output head."""
    head_bias: bool
    """Whether the output head has a bias."""
    tied: bool
    """Whether head and embedding share one weight."""
    other_numel: int
    """Parameters outside the block linears, embedding and head (norms, biases, ...)."""
    model_type: str
    """The config's model_type, for messages."""

    @property
    def linear_names(self) -> tuple[str, ...]:
        """Names of one block's linears."""
        return tuple(info.name for info in self.linears)

    def module_path(self, block: int, name: str) -> str:
        """Full dotted path of linear ``name`` in block ``block``."""
        return f"{self.blocks_path}.{block}.{name}"

    @property
    def signature(self) -> str:
        """A short fingerprint of the shapes: a plan made for another model won't match it."""
        payload = {
            "blocks": self.num_blocks,
            "linears": [{k: v for k, v in asdict(info).items() if k != "kind"} for info in self.linears],
            "embed": list(self.embed_shape),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """One line for error messages."""
        return f"{self.model_type} with {self.num_blocks} blocks of {len(self.linears)} linears"


def _linear_kind(module: nn.Module) -> LinearKind | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return "conv1d"  # transformers.pytorch_utils.Conv1D, checked by name to avoid the import
    return None


def _info(name: str, module: nn.Module) -> LinearInfo | None:
    """LinearInfo of a dense, packed (QuantLinear) or LoRA-wrapped linear, else None."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if hasattr(base, "qweight") and hasattr(base, "in_features"):  # QuantLinear: (out, in)
        return LinearInfo(name, base.in_features, base.out_features, base.bias is not None, "linear")
    kind = _linear_kind(base)
    if kind is None:
        return None
    w = base.weight
    in_f, out_f = (w.shape[1], w.shape[0]) if kind == "linear" else (w.shape[0], w.shape[1])
    return LinearInfo(name, int(in_f), int(out_f), base.bias is not None, kind)


def _linear_modules(block: nn.Module, prefix: str = "") -> list[tuple[LinearInfo, nn.Module]]:
    """Linears under ``block`` in module order; a LoRA wrapper counts as its base layer."""
    found: list[tuple[LinearInfo, nn.Module]] = []
    for name, child in block.named_children():
        path = f"{prefix}{name}"
        info = _info(path, child)
        if info is not None:
            found.append((info, child))
        else:
            found.extend(_linear_modules(child, path + "."))
    return found


def _block_linears(block: nn.Module) -> tuple[LinearInfo, ...]:
    return tuple(info for info, _ in _linear_modules(block))


def _same_layout(a: tuple[LinearInfo, ...], b: tuple[LinearInfo, ...]) -> bool:
    """Same names and shapes; the storage kind may differ (a quantised block vs a dense one)."""
    key = lambda infos: [(i.name, i.in_features, i.out_features, i.bias) for i in infos]  # noqa: E731
    return key(a) == key(b)


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1 or not _block_linears(module[0]):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(
            f"cannot map model {type(model).__name__}: found no list of repeated blocks holding "
            "linear layers; supported are decoders whose blocks sit in an nn.ModuleList "
            "(Llama/Qwen/Mistral `model.layers`, GPT-2 `transformer.h`) with nn.Linear or Conv1D layers"
        )
    return best[1], best[2]


def _path_of(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError(f"module {type(target).__name__} is not part of the model")


def inspect_model(model: nn.Module) -> ModelStructure:
    """Finds the blocks, their linears, the embedding and the head of a causal LM.

    Works on a model on the meta device (no weights needed).

    Raises:
        ValueError: if no repeated blocks with linear layers are found, if blocks differ in
            their linear layers, or if the model has no input embedding.
    """
    blocks_path, blocks = _find_blocks(model)
    linears = _block_linears(blocks[0])
    for i, block in enumerate(blocks):
        if _block_linears(block) != linears:
            raise ValueError(
                f"cannot map model {type(model).__name__}: block {i} of {blocks_path} has other "
                "linear layers than block 0; only models with identical blocks are supported"
            )
    get_in = getattr(model, "get_input_embeddings", None)
    embed = get_in() if get_in else None
    if not isinstance(embed, nn.Embedding):
        raise ValueError(
            f"cannot map model {type(model).__name__}: no nn.Embedding input embedding found "
            f"(get_input_embeddings() returned {type(embed).__name__})"
        )
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out else None
    head_is_linear = isinstance(head, nn.Linear)
    tied = head_is_linear and head.weight is embed.weight
    counted = {id(embed.weight)}
    if head_is_linear:
        counted.add(id(head.weight))
        if head.bias is not None:
            counted.add(id(head.bias))
    for block in blocks:
        for _, module in _linear_modules(block):
            counted.update(id(p) for p in module.parameters())
    seen: set[int] = set()
    other = 0
    for p in model.parameters():
        if id(p) not in counted and id(p) not in seen:
            seen.add(id(p))
            other += p.numel()
    config = getattr(model, "config", None)
    return ModelStructure(
        blocks_path=blocks_path,
        num_blocks=len(blocks),
        linears=linears,
        embed_path=_path_of(model, embed),
        embed_shape=(embed.num_embeddings, embed.embedding_dim),
        head_path=_path_of(model, head) if head_is_linear else None,
        head_shape=(head.out_features, head.in_features) if head_is_linear else None,
        head_bias=bool(head_is_linear and head.bias is not None),
        tied=tied,
        other_numel=other,
        model_type=str(getattr(config, "model_type", type(model).__name__)),
    )


def structure_from_config(config: object) -> ModelStructure:
    """The structure of a transformers config's causal LM, built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return inspect_model(model)
