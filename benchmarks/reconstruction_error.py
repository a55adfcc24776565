"""How well do the quantisers reconstruct the real SmolLM2 weights, per bit-width and method?

For every linear of every block of the embedded SmolLM2-135M-Instruct, quantises the weight
at each bit-width with each method ("rtn" min-max, "hqq" half-quadratic) and measures the
relative Frobenius error ||W - W_hat||_F / ||W||_F. Prints markdown tables of:

* per bit-width and method: the mean of the per-layer errors, and the error of all weights
  together, sqrt(sum_l ||W_l - W_hat_l||^2) / sqrt(sum_l ||W_l||^2);
* per module type (q/k/v/o/gate/up/down) at 2 and 3 bits: the mean error over blocks;
* seconds spent in ``quantize`` per method (the fit and packing; not the error measurement);
* the model's mean token loss on held-out BoolQ passages (8 windows of 256 tokens, seed 0,
  the data of ``tests/test_real_model.py``) with every block at each of ``--loss-bits``,
  using the same fitted codes (dequantised into a copy of the model).

Note: the embedded GGUF stores these weights as Q4_1, so W is already a dequantised 4-bit
weight (blocks of 32 with a scale and minimum); 4-bit and wider codes fit it unusually well.

    python benchmarks/reconstruction_error.py                     # all 30 blocks, bits 1..8
    python benchmarks/reconstruction_error.py --bits 2,4 --limit-blocks 2   # a quick run
    python benchmarks/reconstruction_error.py --methods hqq,hqq-dq --bits 4,5,6,8 --type-bits ''
    python benchmarks/reconstruction_error.py --methods rtn,symmetric --bits 2,3,4,8   # vLLM's codes
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.quant.quantizer import (
    QUANT_METHODS,
    SYMMETRIC,
    QuantizedTensor,
    check_symmetric,
    dequantize,
    quantize,
    relative_error,
)

DQ = "-dq"
"""Suffix of a --methods entry whose scales and zeros are stored as 8-bit codes."""


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def block_modules(model: torch.nn.Module, limit_blocks: int | None) -> list[tuple[str, torch.nn.Module]]:
    """(module name in its block, nn.Linear) of every block linear, block by block."""
    structure = inspect_model(model)
    if any(info.kind != "linear" for info in structure.linears):
        raise ValueError(f"only nn.Linear blocks are supported, got a {structure.describe()}")
    blocks = structure.num_blocks if limit_blocks is None else min(limit_blocks, structure.num_blocks)
    return [
        (info.name, model.get_submodule(structure.module_path(block, info.name)))
        for block in range(blocks)
        for info in structure.linears
    ]


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,
    qts: list[QuantizedTensor] | None = None,
    limit_blocks: int | None = None,
) -> float:
    """Mean token loss of ``model``, or of a copy whose block linears hold ``qts`` dequantised."""
    if qts is not None:
        model = copy.deepcopy(model)
        modules = [m for _, m in block_modules(model, limit_blocks)]
        for module, qt in zip(modules, qts, strict=True):
            module.weight.copy_(dequantize(qt).to(module.weight.dtype))
    return float(model(input_ids=ids, labels=ids).loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="1,2,3,4,5,6,7,8", help="comma-separated bit-widths")
    parser.add_argument(
        "--methods",
        default="rtn,hqq",
        help=f"comma-separated, of {', '.join(QUANT_METHODS)}; a -dq suffix stores the scales and "
        "zeros as 8-bit codes (hqq-dq); symmetric needs --bits from 2",
    )
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--limit-blocks", type=int, default=None, help="only the first N blocks")
    parser.add_argument("--type-bits", default="2,3", help="bit-widths of the per-module table")
    parser.add_argument(
        "--loss-bits", default="2,3,4,8", help="bit-widths whose held-out loss to measure ('' skips)"
    )
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 helps on a busy machine)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bits_list, methods = _ints(args.bits), [m for m in args.methods.split(",") if m]
    for method in methods:
        if method.removesuffix(DQ) not in QUANT_METHODS:
            raise SystemExit(f"--methods: {method!r} is not one of {QUANT_METHODS}, each maybe with {DQ}")
        if method.removesuffix(DQ) == SYMMETRIC:
            try:  # refused here, before the model loads, rather than by the first quantize call
                check_symmetric(min(_ints(args.bits)), method.endswith(DQ), where=f"--methods {method!r}")
            except ValueError as err:
                raise SystemExit(str(err)) from None
    type_bits = [b for b in _ints(args.type_bits) if b in bits_list]
    loss_bits = [b for b in _ints(args.loss_bits) if b in bits_list]

    start = time.perf_counter()
    loaded = load_model(args.model, dtype=torch.float32)
    weights = [(n, m.weight.detach().float()) for n, m in block_modules(loaded.model, args.limit_blocks)]
    ids = None
    if loss_bits:
        from qradaptor.data import load_texts, pack_texts

        texts = load_texts("embedded:boolq-heldout")
        ids = pack_texts(texts, loaded.tokenizer, 256, num_sequences=8, seed=0)
    norms = [float(w.norm()) for _, w in weights]
    numel = sum(w.numel() for _, w in weights)

    # rel[(method, bits)] = per-layer relative errors, in the order of ``weights``
    rel: dict[tuple[str, int], list[float]] = {}
    losses: dict[tuple[str, int], float] = {}
    seconds: dict[str, float] = defaultdict(float)
    with tqdm(total=len(methods) * len(bits_list) * len(weights), unit="layer") as bar:
        for method in methods:
            for bits in bits_list:
                bar.set_description(f"{method} {bits}-bit")
                errors, qts = [], []
                for _, w in weights:
                    t0 = time.perf_counter()
                    qt = quantize(
                        w,
                        bits,
                        args.group_size,
                        method.removesuffix(DQ),  # type: ignore[arg-type]
                        double_quant=method.endswith(DQ),
                    )
                    seconds[method] += time.perf_counter() - t0
                    errors.append(relative_error(w, qt))
                    if bits in loss_bits:
                        qts.append(qt)
                    bar.update()
                rel[(method, bits)] = errors
                if ids is not None and bits in loss_bits:
                    bar.set_description(f"{method} {bits}-bit loss")
                    losses[(method, bits)] = heldout_loss(loaded.model, ids, qts, args.limit_blocks)
                del qts

    blocks = len(weights) // len({name for name, _ in weights})
    print(
        f"\nmodel: {loaded.source}; {blocks} blocks, {len(weights)} linears, {numel:,} weights; "
        f"group_size {args.group_size}; fp32 on CPU; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n"
    )
    print("Relative Frobenius error ||W - W_hat|| / ||W|| (mean over layers; all weights together)\n")
    print("| bits | " + " | ".join(f"{m} mean | {m} all" for m in methods) + " |")
    print("|---:|" + "---:|---:|" * len(methods))
    for bits in bits_list:
        cells = []
        for method in methods:
            errors = rel[(method, bits)]
            total = math.sqrt(sum((e * n) ** 2 for e, n in zip(errors, norms, strict=True)))
            total /= math.sqrt(sum(n**2 for n in norms))
            cells.append(f"{sum(errors) / len(errors):.4f} | {total:.4f}")
        print(f"| {bits} | " + " | ".join(cells) + " |")

    if type_bits:
        names = list(dict.fromkeys(name for name, _ in weights))
        columns = [(m, b) for b in type_bits for m in methods]
        print("\nMean relative error per module type (over blocks)\n")
        print("| module | " + " | ".join(f"{m} {b}-bit" for m, b in columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for name in names:
            cells = []
            for key in columns:
                errors = [e for (n, _), e in zip(weights, rel[key], strict=True) if n == name]
                cells.append(f"{sum(errors) / len(errors):.4f}")
            print(f"| {name} | " + " | ".join(cells) + " |")

    print("\nQuantisation time (fit + pack, all linears)\n")
    print("| method | total s | s per bit-width | ms per layer |")
    print("|---|---:|---:|---:|")
    for method in methods:
        total = seconds[method]
        per_bits = total / len(bits_list)
        print(f"| {method} | {total:.1f} | {per_bits:.2f} | {1e3 * per_bits / len(weights):.1f} |")
    if ids is not None:
        base = heldout_loss(loaded.model, ids)
        scope = "every block" if args.limit_blocks is None else f"the first {blocks} blocks"
        print(
            f"\nMean token loss (nats) on held-out BoolQ passages, {tuple(ids.shape)} tokens, "
            f"{scope} quantised\n"
        )
        print("| bits | " + " | ".join(methods) + " |")
        print("|---:|" + "---:|" * len(methods))
        print("| 16 (Q4_1 dequantised) | " + " | ".join(f"{base:.4f}" for _ in methods) + " |")
        for bits in sorted(loss_bits, reverse=True):
            print(f"| {bits} | " + " | ".join(f"{losses[(m, bits)]:.4f}" for m in methods) + " |")
    print(f"\n{time.perf_counter() - start:.1f} s in all")


if __name__ == "__main__":
    main()
