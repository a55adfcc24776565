"""The Plan: how many bits each layer's frozen weight gets and how large its LoRA adapter is.

A plan is the artifact that flows from profiling to search to training to evaluation. It is
plain data, JSON in and out, and knows models only through a ``ModelStructure``.

Granularity:
    "block"   one (bits, rank) per transformer block, shared by all its linears (the
              paper's granularity, §3.2). Keys are block indices: "0", "1", ...
    "module"  one (bits, rank) per linear module. Keys are "<block>.<name>", e.g.
              "3.self_attn.q_proj".

bits: 1..8 quantises the weight to that many bits (2, 3, 4, 8 are the default search space;
5 and 6 are opt-in), 16 leaves it unquantised. rank: 0 means no adapter. group_size: an entry
may carry its own quantisation group size (it must divide every linear it covers); without
one it takes the plan's. double_quant: the block linears' scales and zeros are stored at 8
bits with a 16-bit step and offset per block of ``META_BLOCK`` values (QLoRA's double
quantisation), instead of 16 bits each. quant_method: how codes are fitted, "rtn", "hqq" (both
asymmetric: a scale and a zero per group) or "symmetric" (llama.cpp's signed-absmax rounding: a
scale per group and no zero, bits 2..8, no double_quant). The adapter of rank r is scaled by
alpha / r with one alpha for the whole model, as in Eq. 4 of the paper (gamma / r_l).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure

UNQUANTIZED = 16
"""The bits value that leaves a weight as it is (16-bit)."""
SEARCH_BITS: tuple[int, ...] = (2, 3, 4, 8, 16)
"""Bit-widths the search considers by default."""
PLAN_FORMAT = 1
SYMMETRIC_METHOD = "symmetric"
"""The quant_method that stores a scale and no zero per group (``quant.quantizer.SYMMETRIC``,
named here too so that memory and packed need not load torch; a test checks they agree)."""
Granularity = Literal["block", "module"]


def check_bits(bits: object, where: str = "bits") -> int:
    """Returns ``bits`` if it is 1..8 or 16, else raises ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 8 or bits == 16):
        raise ValueError(f"{where} must be an integer in 1..8 or 16 (unquantised), got {bits!r}")
    return bits


def check_rank(rank: object, where: str = "rank") -> int:
    """Returns ``rank`` if it is a non-negative integer, else raises ValueError."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"{where} must be an integer >= 0 (0 = no adapter), got {rank!r}")
    return rank


def check_group_size_value(group_size: object, where: str = "group_size") -> int:
    """Returns ``group_size`` if it is a positive integer, else raises ValueError."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{where} must be a positive integer, got {group_size!r}")
    return group_size


@dataclass(frozen=True)
class LayerSpec:
    """Bits of the frozen weight and rank of the adapter of one block or module."""

    bits: int
    """1..8, or 16 for unquantised."""
    rank: int
    """LoRA rank; 0 for no adapter."""
    group_size: int | None = None
    """Input columns per quantisation group of this entry; None takes the plan's group_size."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_rank(self.rank)
        if self.group_size is not None:
            check_group_size_value(self.group_size, "LayerSpec.group_size")


@dataclass(frozen=True)
class Plan:
    """A per-layer allocation of (bits, rank), plus how to quantise and scale.

    Build one with :meth:`uniform`, :meth:`from_lists` or :meth:`from_json`.
    """

    layers: Mapping[str, LayerSpec]
    """Key ("3" or "3.self_attn.q_proj", see module docstring) -> LayerSpec."""
    num_blocks: int
    """Blocks of the model this plan is for."""
    group_size: int = 64
    """Input columns per quantisation group (one scale and zero each), unless an entry sets its own."""
    quant_method: str = "hqq"
    """How codes are fitted: "rtn" (min-max), "hqq" (half-quadratic) or "symmetric" (llama.cpp's
    Q4_0/Q5_0/Q8_0 rounding, no zero point)."""
    alpha: float = 16.0
    """LoRA alpha (gamma in Eq. 4): an adapter of rank r is scaled by alpha / r."""
    embed_bits: int = UNQUANTIZED
    """Bits of the input embedding (16 = unquantised; 8 is the seed study's option)."""
    head_bits: int = UNQUANTIZED
    """Bits of the output head; must equal embed_bits when the two are tied."""
    model_signature: str | None = None
    """Fingerprint of the model structure this plan was made for (None: any with num_blocks)."""
    name: str = ""
    """A label for reports, e.g. "uniform-4bit-r16"."""
    double_quant: bool = False
    """Store the block linears' scales and zeros at 8 bits (QLoRA's double quantisation)."""
    _granularity: Granularity = field(init=False, repr=False, compare=False, default="block")

    def __post_init__(self) -> None:
        from qradaptor.quant.quantizer import QUANT_METHODS, check_symmetric

        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer, got {self.num_blocks!r}")
        check_group_size_value(self.group_size)
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double_quant must be true or false, got {self.double_quant!r}")
        if self.quant_method not in QUANT_METHODS:
            raise ValueError(f"quant_method must be one of {QUANT_METHODS}, got {self.quant_method!r}")
        if not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        check_bits(self.embed_bits, "embed_bits")
        check_bits(self.head_bits, "head_bits")
        if not self.layers:
            raise ValueError("a plan needs at least one layer entry, got none")
        layers = {}
        kinds = set()
        for key, spec in self.layers.items():
            block, _, name = str(key).partition(".")
            if not block.isdigit() or not 0 <= int(block) < self.num_blocks:
                raise ValueError(
                    f"plan key {key!r} must start with a block index in 0..{self.num_blocks - 1}"
                )
            if not isinstance(spec, LayerSpec):
                raise TypeError(f"plan entry {key!r} must be a LayerSpec, got {type(spec).__name__}")
            kinds.add("module" if name else "block")
            if spec.group_size is not None and (
                spec.group_size == self.group_size or spec.bits == UNQUANTIZED
            ):
                # One spelling per plan: the plan's own group size (or none, at 16 bits) is no
                # override, so equal plans have equal JSON and hashes.
                spec = replace(spec, group_size=None)
            layers[str(key)] = spec
        if len(kinds) > 1:
            raise ValueError(
                "a plan's keys must be all block indices or all '<block>.<module>' names, not both"
            )
        granularity = kinds.pop()
        if granularity == "block":
            missing = [i for i in range(self.num_blocks) if str(i) not in layers]
            if missing:
                raise ValueError(
                    f"block plan has no entry for blocks {missing} (it needs 0..{self.num_blocks - 1})"
                )
            layers = {str(i): layers[str(i)] for i in range(self.num_blocks)}
        if self.quant_method == SYMMETRIC_METHOD:
            quantised = {s.bits for s in layers.values()} | {self.embed_bits, self.head_bits}
            check_symmetric(min(quantised), self.double_quant, where="quant_method 'symmetric'")
        object.__setattr__(self, "layers", MappingProxyType(layers))
        object.__setattr__(self, "_granularity", granularity)

    # ----- construction -------------------------------------------------------------
    @classmethod
    def uniform(cls, num_blocks: int, bits: int, rank: int, **kwargs: Any) -> Plan:
        """Every block at ``bits`` with an adapter of ``rank``: e.g. QLoRA is (4, 16)."""
        spec = LayerSpec(bits, rank)
        kwargs.setdefault("name", f"uniform-{bits}bit-r{rank}")
        return cls({str(i): spec for i in range(num_blocks)}, num_blocks, **kwargs)

    @classmethod
    def from_lists(cls, bits: Sequence[int], ranks: Sequence[int], **kwargs: Any) -> Plan:
        """A block plan from per-block lists (the search's genome)."""
        if len(bits) != len(ranks):
            raise ValueError(
                f"bits and ranks must have one entry per block, got {len(bits)} and {len(ranks)}"
            )
        layers = {str(i): LayerSpec(int(b), int(r)) for i, (b, r) in enumerate(zip(bits, ranks, strict=True))}
        return cls(layers, len(bits), **kwargs)

    # ----- queries ------------------------------------------------------------------
    @property
    def granularity(self) -> Granularity:
        """ "block" or "module"."""
        return self._granularity

    def spec_for(self, block: int, module: str) -> LayerSpec:
        """The (bits, rank) of linear ``module`` in ``block``; (16, 0) if a module plan omits it."""
        if self._granularity == "block":
            return self.layers[str(block)]
        return self.layers.get(f"{block}.{module}", LayerSpec(UNQUANTIZED, 0))

    def group_size_of(self, spec: LayerSpec) -> int:
        """The group size ``spec`` is quantised at: its own, else the plan's."""
        return self.group_size if spec.group_size is None else spec.group_size

    def iter_modules(self, structure: ModelStructure) -> Iterator[tuple[int, str, LayerSpec]]:
        """(block, module name, spec) for every linear of every block."""
        for block in range(structure.num_blocks):
            for name in structure.linear_names:
                yield block, name, self.spec_for(block, name)

    def block_bits(self) -> list[int]:
        """Per-block bits (block plans only)."""
        self._need_block("block_bits")
        return [self.layers[str(i)].bits for i in range(self.num_blocks)]

    def block_ranks(self) -> list[int]:
        """Per-block ranks (block plans only)."""
        self._need_block("block_ranks")
        return [self.layers[str(i)].rank for i in range(self.num_blocks)]

    def _need_block(self, what: str) -> None:
        if self._granularity != "block":
            raise ValueError(f"{what} needs a block-granularity plan, this one is per module")

    def validate(self, structure: ModelStructure) -> None:
        """Raises ValueError unless this plan fits ``structure``.

        Checks block count, signature, module names, the group size against every
        quantised layer's input size, every rank against its layer's width (a LoRA of rank r
        on an (out, in) linear is at most full rank at r = min(in, out); above it the memory
        model counts parameters that add nothing), and tied embedding/head bits.
        """
        from qradaptor.quant.quantizer import check_group_size

        if self.num_blocks != structure.num_blocks or (
            self.model_signature is not None and self.model_signature != structure.signature
        ):
            raise ValueError(
                f"plan {self.name or '(unnamed)'} was made for another model: it has "
                f"{self.num_blocks} blocks and signature {self.model_signature}, the model is a "
                f"{structure.describe()} with signature {structure.signature}"
            )
        if self._granularity == "module":
            known = set(structure.linear_names)
            for key in self.layers:
                name = key.partition(".")[2]
                if name not in known:
                    raise ValueError(f"plan key {key!r} names no linear of a block; known: {sorted(known)}")
        for block, name, spec in self.iter_modules(structure):
            info = next(i for i in structure.linears if i.name == name)
            width = min(info.in_features, info.out_features)
            if spec.rank > width:
                raise ValueError(
                    f"rank {spec.rank} of {structure.module_path(block, name)} exceeds the layer's width "
                    f"{width} (a {info.out_features}x{info.in_features} linear is full rank at {width}); "
                    f"give this layer a rank of at most {width}"
                )
            if spec.bits != UNQUANTIZED:
                check_group_size(
                    info.in_features, self.group_size_of(spec), where=structure.module_path(block, name)
                )
        if self.embed_bits != UNQUANTIZED:
            check_group_size(structure.embed_shape[1], self.group_size, where=structure.embed_path)
        if self.head_bits != UNQUANTIZED and structure.head_shape is not None:
            check_group_size(structure.head_shape[1], self.group_size, where=str(structure.head_path))
        if structure.tied and self.embed_bits != self.head_bits:
            raise ValueError(
                f"the model ties its embedding and head, so embed_bits and head_bits must be equal, "
                f"got {self.embed_bits} and {self.head_bits}"
            )

    def for_model(self, structure: ModelStructure) -> Plan:
        """This plan validated against ``structure`` and stamped with its signature."""
        self.validate(structure)
        return replace(self, model_signature=structure.signature)

    # ----- PEFT ---------------------------------------------------------------------
    def to_rank_pattern(self, structure: ModelStructure) -> dict[str, int]:
        """PEFT ``rank_pattern``: full module path -> rank, for every module with rank > 0."""
        return {
            structure.module_path(block, name): spec.rank
            for block, name, spec in self.iter_modules(structure)
            if spec.rank > 0
        }

    @classmethod
    def from_rank_pattern(
        cls,
        rank_pattern: Mapping[str, int],
        structure: ModelStructure,
        bits: int | Mapping[str, int] = UNQUANTIZED,
        **kwargs: Any,
    ) -> Plan:
        """A plan from PEFT's ``rank_pattern`` (full or suffix module paths -> rank).

        Modules not matched get rank 0. ``bits`` is one value or a rank_pattern-like map.
        A block plan comes back when every block's modules agree, else a module plan.
        """

        def lookup(pattern: Mapping[str, int], path: str, default: int) -> int:
            hits = [v for k, v in pattern.items() if path == k or path.endswith("." + k)]
            return int(hits[-1]) if hits else default

        per_module: dict[str, LayerSpec] = {}
        for block in range(structure.num_blocks):
            for name in structure.linear_names:
                path = structure.module_path(block, name)
                b = bits if isinstance(bits, int) else lookup(bits, path, UNQUANTIZED)
                per_module[f"{block}.{name}"] = LayerSpec(b, lookup(rank_pattern, path, 0))
        kwargs.setdefault("model_signature", structure.signature)
        by_block = {}
        for block in range(structure.num_blocks):
            specs = {per_module[f"{block}.{n}"] for n in structure.linear_names}
            if len(specs) != 1:
                return cls(per_module, structure.num_blocks, **kwargs)
            by_block[str(block)] = specs.pop()
        return cls(by_block, structure.num_blocks, **kwargs)

    # ----- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`from_dict`)."""
        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "num_blocks": self.num_blocks,
            "granularity": self._granularity,
            "group_size": self.group_size,
            "quant_method": self.quant_method,
            "alpha": self.alpha,
            "embed_bits": self.embed_bits,
            "head_bits": self.head_bits,
            "model_signature": self.model_signature,
            # Options at their defaults are left out, so plans written before they existed keep
            # their JSON and plan_hash.
            **({"double_quant": True} if self.double_quant else {}),
            "layers": {k: _layer_dict(s) for k, s in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; raises ValueError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ValueError(f"plan format {data.get('format')!r} is not supported (expected {PLAN_FORMAT})")
        missing = [k for k in ("num_blocks", "layers") if k not in data]
        if missing:
            raise ValueError(f"plan is missing the fields {missing}; found {sorted(data)}")
        raw = data["layers"]
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"plan field 'layers' must be an object of key -> {{bits, rank}}, got {type(raw).__name__}"
            )
        layers = {}
        for key, entry in raw.items():
            if not isinstance(entry, Mapping) or not {"bits", "rank"} <= set(entry) <= _LAYER_FIELDS:
                raise ValueError(
                    f'plan layer {key!r} must be {{"bits": int, "rank": int}} with an optional '
                    f'"group_size": int, got {entry!r}'
                )
            group_size = entry.get("group_size")
            layers[key] = LayerSpec(
                check_bits(entry["bits"], f"bits of layer {key!r}"),
                check_rank(entry["rank"], f"rank of layer {key!r}"),
                None
                if group_size is None
                else check_group_size_value(group_size, f"group_size of layer {key!r}"),
            )
        known = {
            "group_size",
            "quant_method",
            "alpha",
            "embed_bits",
            "head_bits",
            "model_signature",
            "name",
            "double_quant",
        }
        kwargs = {k: data[k] for k in known if k in data}
        return cls(layers, data["num_blocks"], **kwargs)

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parses :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"plan is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @property
    def plan_hash(self) -> str:
        """Stable short hash of everything that changes the built model (not the name)."""
        data = self.to_dict()
        data.pop("name")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


_LAYER_FIELDS = {"bits", "rank", "group_size"}


def _layer_dict(spec: LayerSpec) -> dict[str, int]:
    out = {"bits": spec.bits, "rank": spec.rank}
    if spec.group_size is not None:
        out["group_size"] = spec.group_size
    return out
