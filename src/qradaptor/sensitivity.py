"""Layer-wise sensitivity profiling: how much each block's (or module's) quantisation moves
the output.

For every transformer block l and candidate bit-width b (§3.3, Eq. 6 of QR-Adaptor):

    S_l(b) = 1/|D| * sum_{t in D} KL( P(y | x_<=t; W_fp) || P(y | x_<=t; W with only block l at b bits) )
           = 1/|D| * sum_t sum_v p_fp(v) * (log p_fp(v) - log p_q(v))

in nats per token, where D is every non-padding position of the calibration windows. Per
module (``granularity="module"``) the same KL is taken with only one linear of block l at b
bits, a row per (block, module): Eq. 6 applied to each linear, on the same windows and the
same cached reference. The paper's S_l is the column at the lowest candidate bits
(``SensitivityTable.min_bits_profile``); the search min-max normalises it to bias its initial
population (``search.initial.normalise``).

Cost: one full-precision forward over the calibration set, then one forward per
(block, bits), or per (block, module, bits): 7x the forwards on a Llama block, the same fits.
Each (linear, bits) weight is quantised exactly once (a dense "simulated" copy, see
``quant.modules.simulated_linear``) and swapped in only while its row is scored; the
original modules are put back, so the model is bit-identical afterwards. Blocks before
l see the full-precision input whatever block l holds, so their output is recorded once in
the full-precision pass and replayed (``reuse_prefix``): scoring block l runs only blocks
l..L-1 and the head, about half the block compute on average, with bit-identical results.

Memory: the full-precision log-probs are kept on the model's device in float32, N * T * V * 4
bytes, e.g. 2048 tokens of SmolLM2 (V = 49152) take 403 MB, 4096 tokens 805 MB. Keeping them
makes the result exact and saves re-running the full-precision model per (block, bits);
``max_tokens`` caps the calibration set when that is too much. Replaying the prefix adds
the recorded block outputs, N * T * hidden * 4 bytes per block (SmolLM2: 30 blocks of 576
floats per token, 2048 tokens take 142 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qradaptor.build import _dense_weight, _set_module
from qradaptor.models.structure import inspect_model
from qradaptor.plan import check_bits
from qradaptor.quant.modules import simulated_linear
from qradaptor.sensitivity_table import GRANULARITIES, SensitivityTable

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.quant.cache import QuantCache

DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 8)
"""Candidate bit-widths profiled by default (the search space minus 16-bit)."""


def _check_bits_list(bits: Sequence[int]) -> tuple[int, ...]:
    if isinstance(bits, int) or not bits:
        raise ValueError(f"bits must be a non-empty sequence of bit-widths in 1..8, got {bits!r}")
    for b in bits:
        if check_bits(b, "each of bits") == 16:
            raise ValueError(f"bits must be in 1..8 (16 is the reference itself), got {bits!r}")
    if len(set(bits)) != len(bits):
        raise ValueError(f"bits must not repeat a bit-width, got {bits!r}")
    return tuple(sorted(bits))


def _check_calibration(
    calibration: torch.Tensor, attention_mask: torch.Tensor | None, max_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
        shape = (
            tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        )
        raise ValueError(f"calibration must be a 2-D (N, T) tensor of token ids, got {shape}")
    if calibration.dtype not in (torch.long, torch.int32) or calibration.numel() == 0:
        raise ValueError(
            f"calibration must be a non-empty integer tensor, got dtype {calibration.dtype} "
            f"shape {tuple(calibration.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != calibration.shape:
        raise ValueError(
            f"attention_mask must have the calibration's shape {tuple(calibration.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        keep = max(1, max_tokens // calibration.shape[1])  # whole windows only
        calibration = calibration[:keep]
        attention_mask = None if attention_mask is None else attention_mask[:keep]
    return calibration, attention_mask


def _logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
    return torch.log_softmax(logits.float(), dim=-1)  # (B, T, V) float32


def _kl_sum(ref: torch.Tensor, test: torch.Tensor, mask: torch.Tensor | None) -> float:
    """sum over non-padding positions of KL(ref || test); both (B, T, V) log-probs."""
    kl = (ref.exp() * (ref - test)).sum(dim=-1)  # (B, T)
    if mask is not None:
        kl = kl * mask.to(kl.dtype)
    return float(kl.sum(dtype=torch.float64))


class _Replay(nn.Module):
    """Stands in for blocks 0..l-1: returns block l-1's recorded output without computing it."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


def _record_block_outputs(
    blocks: nn.ModuleList, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, list[Any]]:
    """Log-probs of one batch and the output of every block, as the layer loop received it."""
    outputs: list[Any] = []
    hooks = [block.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in blocks]
    try:
        logprobs = _logprobs(model, ids, mask)
    finally:
        for hook in hooks:
            hook.remove()
    if len(outputs) != len(blocks):
        raise ValueError(
            f"reuse_prefix needs each of the {len(blocks)} blocks to run once per forward, "
            f"saw {len(outputs)} block calls; pass reuse_prefix=False for this model"
        )
    return logprobs, outputs


def _units(structure: ModelStructure, granularity: str) -> list[tuple[str, ...]]:
    """The linear names quantised together in each row of one block: all of them per block,
    one per row per module (in ``structure.linear_names`` order)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "block":
        return [structure.linear_names]
    return [(name,) for name in structure.linear_names]


def _quantised(
    model: nn.Module,
    structure: ModelStructure,
    block: int,
    names: tuple[str, ...],
    bits: int,
    group_size: int,
    method: str,
    cache: QuantCache | None = None,
    double_quant: bool = False,
) -> dict[str, nn.Module]:
    """Simulated-quantised copies of the linears ``names`` of ``block``, keyed by full module path."""
    out = {}
    for info in structure.linears:
        if info.name not in names:
            continue
        path = structure.module_path(block, info.name)
        module = model.get_submodule(path)
        bias = None if module.bias is None else module.bias.data
        weight = _dense_weight(module, info)
        if cache is None:
            fitted = None
        else:
            fitted = cache.get(path, weight, bits, group_size, method, double_quant=double_quant)  # type: ignore[arg-type]
        out[path] = simulated_linear(
            weight, bias, bits, group_size, method, fitted=fitted, double_quant=double_quant
        )  # type: ignore[arg-type]
    return out


def profile_sensitivity(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    bits: Sequence[int] = DEFAULT_BITS,
    group_size: int = 64,
    quant_method: str = "hqq",
    batch_size: int = 4,
    attention_mask: torch.Tensor | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    cache: QuantCache | None = None,
    reuse_prefix: bool = True,
    double_quant: bool = False,
    granularity: str = "block",
) -> SensitivityTable:
    """Measures S_l(b) of Eq. 6 (§3.3) for every block (or module) l and candidate bit-width b.

    The full-precision log-probs are computed once and kept (float32, on the model's device);
    then for each block and each bit-width that block's linears alone (per module: one linear
    of it alone) are replaced by quantise-dequantise copies, the calibration set is run again,
    and the KL to the full-precision distribution is averaged over tokens. The original
    modules are restored (also on error), so the model's outputs are bit-identical afterwards.

    Args:
        model: a causal LM that ``inspect_model`` understands (Llama/Qwen/Mistral/GPT-2-style).
        calibration: (N, T) token ids, e.g. from ``pack_texts``.
        bits: candidate bit-widths, each 1..8.
        group_size: input columns per quantisation group.
        quant_method: "rtn", "hqq" or "symmetric" (``quant.quantizer.QUANT_METHODS``).
        batch_size: windows per forward pass.
        attention_mask: optional (N, T) mask; positions where it is 0 are excluded.
        max_tokens: keep only the first ``max_tokens // T`` windows (at least one), to bound
            the N * T * V * 4 bytes of stored log-probs.
        progress: show progress over (block, bits): a bar on a terminal, lines in a log.
        cache: keeps every (linear, bits) fit, so a search's proxy builds reuse them.
        reuse_prefix: replay the recorded full-precision outputs of blocks 0..l-1 while
            block l is scored instead of recomputing them (same numbers, about half the
            block compute); False runs every forward from the embedding.
        double_quant: double-quantise the scales and zeros to 8 bits, as a plan with
            ``double_quant`` builds them.
        granularity: "block" (a row per block, all its linears quantised) or "module" (a row
            per (block, linear), only that linear quantised; ``modules`` names them).

    Returns:
        The table of mean KL (nats per token), blocks (or (block, module) units) by bits.

    Raises:
        ValueError: for empty or out-of-range ``bits``, calibration that is not a non-empty
            2-D integer tensor, a bad ``batch_size``/``max_tokens``/``quant_method``/
            ``group_size``/``granularity``, or a model ``inspect_model`` cannot map.
    """
    from qradaptor.progress import progress_bar
    from qradaptor.quant.quantizer import QUANT_METHODS

    bits_t = _check_bits_list(bits)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if quant_method not in QUANT_METHODS:
        raise ValueError(f"quant_method must be one of {QUANT_METHODS}, got {quant_method!r}")
    calibration, attention_mask = _check_calibration(calibration, attention_mask, max_tokens)
    structure = inspect_model(model)
    units = _units(structure, granularity)  # linears quantised together, per row of a block
    from qradaptor.quant.quantizer import check_group_size

    for info in structure.linears:  # before any forward: a bad group size fails at once
        check_group_size(info.in_features, group_size, where=structure.module_path(0, info.name))
    device = next(model.parameters()).device
    ids = calibration.to(device)  # (N, T)
    mask = None if attention_mask is None else attention_mask.to(device)
    batches = [
        (ids[i : i + batch_size], None if mask is None else mask[i : i + batch_size])
        for i in range(0, ids.shape[0], batch_size)
    ]
    tokens = ids.numel() if mask is None else int(mask.sum())
    if tokens == 0:
        raise ValueError("attention_mask must keep at least one position, got all zeros")

    was_training = model.training
    model.eval()
    kl: list[list[float]] = [[0.0] * len(bits_t) for _ in range(structure.num_blocks * len(units))]
    try:
        with torch.inference_mode():
            blocks = model.get_submodule(structure.blocks_path)
            assert isinstance(blocks, nn.ModuleList), "inspect_model maps blocks to a ModuleList"
            if reuse_prefix:
                recorded = [_record_block_outputs(blocks, model, b_ids, b_mask) for b_ids, b_mask in batches]
                reference = [logprobs for logprobs, _ in recorded]  # (B, T, V) each
                prefix_outputs = [outputs for _, outputs in recorded]  # [batch][block]
                del recorded
            else:
                reference = [_logprobs(model, b_ids, b_mask) for b_ids, b_mask in batches]
            original_blocks = list(blocks)
            fits = structure.num_blocks * len(units) * len(bits_t)
            bar = progress_bar(total=fits, desc="sensitivity", unit="fit", enabled=progress)
            rows = [(block, names) for block in range(structure.num_blocks) for names in units]
            for row, (block, names) in enumerate(rows):
                paths = [structure.module_path(block, name) for name in names]
                originals = {path: model.get_submodule(path) for path in paths}
                try:
                    for j, b in enumerate(bits_t):
                        for path, new in _quantised(
                            model, structure, block, names, b, group_size, quant_method, cache, double_quant
                        ).items():
                            _set_module(model, path, new)
                        total = 0.0
                        for k, ((b_ids, b_mask), ref) in enumerate(zip(batches, reference, strict=True)):
                            if reuse_prefix and block > 0:
                                replay = _Replay(prefix_outputs[k][block - 1])
                                for earlier in range(block):
                                    blocks[earlier] = replay
                            try:
                                total += _kl_sum(ref, _logprobs(model, b_ids, b_mask), b_mask)
                            finally:
                                for earlier in range(block):
                                    blocks[earlier] = original_blocks[earlier]
                        # KL >= 0 exactly; tiny negatives are float rounding of identical outputs.
                        kl[row][j] = max(total / tokens, 0.0)
                        # Put the originals back before quantising the next bit-width from them.
                        for path, original in originals.items():
                            _set_module(model, path, original)
                        bar.update(1)
                finally:
                    for path, original in originals.items():
                        _set_module(model, path, original)
            bar.close()
    finally:
        model.train(was_training)
    return SensitivityTable(
        bits=bits_t,
        kl=tuple(tuple(row) for row in kl),
        tokens=tokens,
        group_size=group_size,
        quant_method=quant_method,
        double_quant=double_quant,
        granularity=granularity,
        modules=structure.linear_names if granularity == "module" else (),
    )
