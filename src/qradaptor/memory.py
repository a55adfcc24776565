"""The memory model: bytes of a plan for a model, without building it (Eq. 5's Mem(q_l, r_l)).

Weights and adapters are counted exactly, the way ``apply_plan`` stores them:
    quantised weight  packed codes, ``bits * ceil(in / 8)`` bytes per output row, plus one
                      16-bit scale and one 16-bit zero per group of ``group_size`` inputs (the
                      layer's own group size where the plan gives one); with the plan's
                      ``double_quant`` a block linear's scales and zeros are 8-bit codes plus a
                      16-bit step and offset per ``META_BLOCK`` of them (``quant.metaquant``);
                      with the plan's quant_method "symmetric" a scale only, no zero
    16-bit weight     ``numel * weight_bytes`` (2 for bf16/fp16; 4 when run in fp32 on CPU)
    biases, norms     ``numel * weight_bytes``, never quantised
    LoRA rank r       ``r * (in + out) * adapter_bytes`` (PEFT keeps adapters in fp32)
so ``plan_memory(...).total_bytes`` equals ``model_tensor_bytes`` of the built model.
With ``base_format="nf4"`` or ``"nf4-dq"`` the 4-bit layers are bitsandbytes NF4 instead
(``nf4_nbytes``: what the GPU holds; qlora-nf4-nodq and qlora-nf4).

"Avg. bits" (the paper's x-axis) is bits per block-linear weight including the scale and
zero metadata: 4-bit at group 64 is 4 + 32/64 = 4.5; symmetric (a scale, no zero) 4 + 16/g,
4.5 at group 32 and 4.25 at group 64. Training adds gradients and AdamW
states of the adapters and an activation estimate (documented in ``training_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qradaptor.models.structure import ModelStructure
from qradaptor.plan import SYMMETRIC_METHOD, UNQUANTIZED, Plan
from qradaptor.quant.bitpack import packed_nbytes
from qradaptor.quant.metaquant import meta_nbytes

META_BYTES = 2
"""Bytes of one scale or zero (float16)."""


BASE_FORMATS = ("packed", "nf4", "nf4-dq")
"""How quantised layers are stored: our packed codes, or bitsandbytes NF4 without / with
double quantisation of its block constants."""
NF4_BLOCK = 64
"""bitsandbytes' NF4 block size (weights per absmax)."""
NF4_NESTED_BLOCK = 256
"""Double quantisation: absmax values per second-level fp32 absmax (bitsandbytes' choice)."""


def quantized_nbytes(
    rows: int, cols: int, bits: int, group_size: int, *, double_quant: bool = False, symmetric: bool = False
) -> int:
    """Bytes of a (rows, cols) weight stored at ``bits`` with a scale and a zero per group.

    Scales and zeros are float16, or with ``double_quant`` 8-bit codes with their blocks' steps
    and offsets (``metaquant.meta_nbytes`` each). ``symmetric``: a float16 scale and no zero.
    """
    groups = rows * (cols // group_size)
    if symmetric:
        assert not double_quant, "a symmetric fit has no double quantisation (Plan refuses it)"
        return packed_nbytes(rows, cols, bits) + META_BYTES * groups
    meta = meta_nbytes(groups) if double_quant else META_BYTES * groups
    return packed_nbytes(rows, cols, bits) + 2 * meta


def nf4_nbytes(rows: int, cols: int, *, double_quant: bool) -> int:
    """Bytes a bitsandbytes (>= 0.46) NF4 ``Linear4bit`` holds for a (rows, cols) weight.

    With n = rows * cols and B = ceil(n / 64) blocks, ``quantize_4bit`` keeps
        codes       ceil(n / 2) bytes (two 4-bit codes per uint8)
        quant_map   the 16 NF4 levels in fp32: 64 bytes per layer
    and either (no double quantisation) one fp32 absmax per block, 4 B bytes, or (QLoRA's
    double quantisation, ``compress_statistics=True``) the absmaxes as 8-bit codes, B bytes,
    an fp32 offset (their mean), 4 bytes, one fp32 absmax per 256 of them, 4 ceil(B / 256)
    bytes, and the 256-entry fp32 dynamic map they are coded with, 1,024 bytes (copied into
    every layer's state since bitsandbytes 0.46; older versions share one). Per weight that is
    4 + 32/64 = 4.5 bits, or 4 + 8/64 + 32/(64 * 256) = 4.127 bits plus the per-layer constants.
    """
    n = rows * cols
    blocks = -(-n // NF4_BLOCK)
    codes = (n + 1) // 2 + 16 * 4
    if not double_quant:
        return codes + 4 * blocks
    return codes + blocks + 4 + 4 * -(-blocks // NF4_NESTED_BLOCK) + 256 * 4


@dataclass(frozen=True)
class LayerMemory:
    """Bytes of one linear of one block."""

    path: str
    """Full module path."""
    bits: int
    """Bits of its weight (16 = unquantised)."""
    rank: int
    """Adapter rank."""
    numel: int
    """Weights (bias excluded)."""
    weight_bytes: int
    """Codes + scales + zeros, or the dense 16-bit weight."""
    bias_bytes: int
    """Bias, if any."""
    adapter_bytes: int
    """LoRA A and B."""

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight with metadata; 16 for an unquantised layer."""
        return float(UNQUANTIZED) if self.bits == UNQUANTIZED else 8 * self.weight_bytes / self.numel


@dataclass(frozen=True)
class MemoryReport:
    """Bytes of a plan applied to a model."""

    layers: tuple[LayerMemory, ...]
    """Every block linear."""
    embed_bytes: int
    """Input embedding (and the tied head)."""
    head_bytes: int
    """Output head when not tied, else 0."""
    other_bytes: int
    """Norms and other parameters outside the block linears."""
    adapter_params: int
    """Trainable LoRA parameters."""

    @property
    def linear_bytes(self) -> int:
        """Block linears' weights and biases (no adapters)."""
        return sum(m.weight_bytes + m.bias_bytes for m in self.layers)

    @property
    def adapter_bytes(self) -> int:
        """All LoRA parameters."""
        return sum(m.adapter_bytes for m in self.layers)

    @property
    def total_bytes(self) -> int:
        """Everything the built model stores: equals ``model_tensor_bytes`` of it."""
        return self.linear_bytes + self.adapter_bytes + self.embed_bytes + self.head_bytes + self.other_bytes

    @property
    def avg_bits(self) -> float:
        """Bits per block-linear weight, scales and zeros included (the paper's Avg. Bit).

        Unquantised layers count 16 bits, whatever dtype they are run in.
        """
        numel = sum(m.numel for m in self.layers)
        return sum(m.bits_per_weight * m.numel for m in self.layers) / numel

    @property
    def avg_rank(self) -> float:
        """Mean adapter rank over block linears (0 for unadapted ones)."""
        return sum(m.rank for m in self.layers) / len(self.layers)


def plan_memory(
    structure: ModelStructure,
    plan: Plan,
    *,
    weight_bytes: int = 2,
    adapter_bytes: int = 4,
    base_format: str = "packed",
) -> MemoryReport:
    """Bytes of ``plan`` on the model described by ``structure``, without building it.

    Args:
        structure: from ``inspect_model`` or ``structure_from_config``.
        plan: the allocation; validated against ``structure``.
        weight_bytes: bytes per unquantised weight (2 for bf16/fp16, 4 for fp32).
        adapter_bytes: bytes per LoRA parameter (PEFT upcasts adapters to fp32: 4).
        base_format: one of ``BASE_FORMATS``: "packed" (our codes), "nf4" or "nf4-dq"
            (bitsandbytes NF4 without / with double quantisation, see ``nf4_nbytes``).

    Returns:
        A MemoryReport with per-layer and total bytes, avg bits and avg rank.

    Raises:
        ValueError: an unknown ``base_format``, or an NF4 format with a quantised layer not at
            4 bits or a quantised embedding or head (bitsandbytes NF4 is 4-bit linears only).
    """
    plan.validate(structure)
    if base_format not in BASE_FORMATS:
        raise ValueError(f"base_format must be one of {BASE_FORMATS}, got {base_format!r}")
    if base_format != "packed":
        bits = {s.bits for s in plan.layers.values()} - {UNQUANTIZED}
        if bits - {4} or plan.embed_bits != UNQUANTIZED or plan.head_bits != UNQUANTIZED:
            raise ValueError(
                f"base_format {base_format!r} stores 4-bit block linears only (embedding and head "
                f"16-bit), got block bits {sorted(bits)}, embed_bits {plan.embed_bits}, "
                f"head_bits {plan.head_bits}"
            )
    infos = {info.name: info for info in structure.linears}
    layers = []
    adapter_params = 0
    for block, name, spec in plan.iter_modules(structure):
        info = infos[name]
        if spec.bits == UNQUANTIZED:
            wbytes = info.numel * weight_bytes
        elif base_format != "packed":
            wbytes = nf4_nbytes(info.out_features, info.in_features, double_quant=base_format == "nf4-dq")
        else:
            wbytes = quantized_nbytes(
                info.out_features,
                info.in_features,
                spec.bits,
                plan.group_size_of(spec),
                double_quant=plan.double_quant,
                symmetric=plan.quant_method == SYMMETRIC_METHOD,
            )
        lora = spec.rank * (info.in_features + info.out_features)
        adapter_params += lora
        layers.append(
            LayerMemory(
                path=structure.module_path(block, name),
                bits=spec.bits,
                rank=spec.rank,
                numel=info.numel,
                weight_bytes=wbytes,
                bias_bytes=info.out_features * weight_bytes if info.bias else 0,
                adapter_bytes=lora * adapter_bytes,
            )
        )

    symmetric = plan.quant_method == SYMMETRIC_METHOD

    def table_bytes(shape: tuple[int, int], bits: int) -> int:
        rows, cols = shape
        return (
            rows * cols * weight_bytes
            if bits == UNQUANTIZED
            else quantized_nbytes(rows, cols, bits, plan.group_size, symmetric=symmetric)
        )

    head = 0
    if structure.head_shape is not None and not structure.tied:
        head = table_bytes(structure.head_shape, plan.head_bits)
        head += structure.head_shape[0] * weight_bytes if structure.head_bias else 0
    return MemoryReport(
        layers=tuple(layers),
        embed_bytes=table_bytes(structure.embed_shape, plan.embed_bits),
        head_bytes=head,
        other_bytes=structure.other_numel * weight_bytes,
        adapter_params=adapter_params,
    )


def model_tensor_bytes(model: object) -> int:
    """Bytes of every distinct tensor in a built model's state dict (shared storage once).

    Non-persistent buffers (e.g. rotary tables, recomputed from the config) are not model
    weights and are not counted, matching the memory model.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict(keep_vars=True).values():  # type: ignore[attr-defined]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


ADAPTER_KINDS = ("lora", "dora", "adalora")
"""Adapter kinds ``training_memory`` knows the saved activations of."""


@dataclass(frozen=True)
class TrainingMemory:
    """Predicted peak bytes of a LoRA training step."""

    weights: int
    """Model weights and adapters (``MemoryReport.total_bytes``)."""
    gradients: int
    """Adapter gradients (same dtype as the adapters)."""
    optimizer: int
    """AdamW's two fp32 moments per adapter parameter."""
    activations: int
    """Estimate of tensors saved for the backward, and the logits."""

    @property
    def total(self) -> int:
        """Sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(
    structure: ModelStructure,
    report: MemoryReport,
    *,
    batch_size: int,
    seq_len: int,
    act_bytes: int = 2,
    adapter_bytes: int = 4,
    gradient_checkpointing: bool = False,
    lora_dropout: bool = False,
    adapter: str = "lora",
    checkpoint_blocks: int | None = None,
) -> TrainingMemory:
    """Predicted peak memory of one LoRA training step (an estimate, checked on the GPU).

    Tensors saved for the backward, per token and block (counted on SmolLM2 with
    ``torch.autograd.graph.saved_tensors_hooks``, see docs/MEMORY.md):
        * in ``act_bytes``: the input of every linear, once per distinct input (q/k/v share
          one, gate/up share one); the output of every linear (rotary, attention, the
          activation function and the gating product keep them); two norm outputs;
        * in fp32: the two RMSNorm inputs (Llama-family norms upcast) and each adapter's
          rank-r intermediate; when activations are not fp32, PEFT also keeps an fp32 copy
          of each adapted module's input.
    Three additions per token and block, measured on an H100 in bf16 (docs/TRAINING.md):
        * ``lora_dropout``: a bool mask per adapted module's input (1 byte per input element);
        * ``adapter="dora"``: PEFT's DoRA keeps each adapted module's LoRA output in fp32 and
          its base output in ``act_bytes``, for the magnitude's gradient;
        * ``adapter="adalora"``: PEFT's AdaLoRA keeps each adapted module's output in fp32.
    With gradient checkpointing only each block's input is kept, plus one block's worth
    during its recomputation, plus that block's packed weights dequantised (in ``act_bytes``):
    its recomputation keeps them for the backward (``build.enable_gradient_checkpointing``).
    ``checkpoint_blocks`` K: only the first K blocks are checkpointed (None: every block); the
    others keep all they save.
    The logits cost, per token and vocabulary entry, the ``act_bytes`` logits plus three fp32
    tensors at the loss (the saved log-softmax, its gradient and the upcast gradient); fp32 logits
    need no upcast, so two (counted on CPU with ``tensor_peak.TensorPeak``,
    tests/test_stage_memory.py).
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    if adapter not in ADAPTER_KINDS:
        raise ValueError(f"adapter must be one of {ADAPTER_KINDS}, got {adapter!r}")
    per_output = {"lora": 0, "dora": 4 + act_bytes, "adalora": 4}[adapter]
    tokens = batch_size * seq_len
    hidden = structure.embed_shape[1]
    parents = {info.name: (info.name.rpartition(".")[0], info.in_features) for info in structure.linears}
    infos = {info.name: info for info in structure.linears}
    inputs = sum(in_features for _, in_features in set(parents.values()))
    outputs = sum(info.out_features for info in structure.linears)
    dense_block = (inputs + outputs + 2 * hidden) * act_bytes + 2 * hidden * 4
    block_bytes = [dense_block] * structure.num_blocks
    adapted: list[set[tuple[str, int]]] = [set() for _ in range(structure.num_blocks)]
    dequantised = [0] * structure.num_blocks  # a block's packed weights, dense, in act_bytes
    for layer in report.layers:
        block, _, name = layer.path[len(structure.blocks_path) + 1 :].partition(".")
        if layer.bits < 16:
            dequantised[int(block)] += layer.numel * act_bytes
        if layer.rank:
            info = infos[name]
            block_bytes[int(block)] += layer.rank * adapter_bytes + info.out_features * per_output
            block_bytes[int(block)] += info.in_features if lora_dropout else 0
            adapted[int(block)].add(parents[name])
    if act_bytes != adapter_bytes:
        for block, found in enumerate(adapted):
            block_bytes[block] += sum(in_features for _, in_features in found) * adapter_bytes
    checkpointed = 0
    if gradient_checkpointing:
        checkpointed = structure.num_blocks if checkpoint_blocks is None else checkpoint_blocks
        if not 1 <= checkpointed <= structure.num_blocks:
            raise ValueError(
                f"checkpoint_blocks must be 1..{structure.num_blocks} (the model's blocks), "
                f"got {checkpoint_blocks}"
            )
    per_token = sum(block_bytes[checkpointed:])
    kept = 0
    if checkpointed:
        per_token += checkpointed * hidden * act_bytes + max(block_bytes[:checkpointed])
        kept = max(dequantised[:checkpointed])
    vocab = structure.head_shape[0] if structure.head_shape else structure.embed_shape[0]
    logits = tokens * vocab * (act_bytes + (8 if act_bytes == 4 else 12))
    return TrainingMemory(
        weights=report.total_bytes,
        gradients=report.adapter_params * adapter_bytes,
        optimizer=report.adapter_params * 8,
        activations=tokens * per_token + logits + kept,
    )
