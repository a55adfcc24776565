"""Uniform 4-bit, quantised only: our asymmetric fit beside symmetric fits in llama.cpp's Q4_0
layout, at their stored bits, by held-out perplexity. Prints a table.

Why: llama.cpp runs Q4_0 (a float16 scale per 32 weights, codes q in 0..15, w = d * (q - 8))
2.4x faster on the prompt than Q4_1 on a CPU (docs/EXPORT.md), and our asymmetric codes (a real
zero per group) can only be written into Q4_1. This measures what a symmetric fit would cost in
quality at equal stored bits before one is built into the quantiser.

Every block linear of the embedded SmolLM2-135M-Instruct is replaced by its dequantised fit
(fp32), then scored by ``qra eval``'s ppl_wiki and ppl_lambada. Note: the embedded model's
"16-bit" weights are its Q4_1 GGUF dequantised, so an asymmetric 4-bit fit at group 32 recovers
them almost exactly; that row is the base model, not a result about group 32.

    python benchmarks/symmetric_4bit.py --limit 32
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch

from qradaptor.eval.suite import run_suite
from qradaptor.models.loading import load_model
from qradaptor.quant.quantizer import dequantize, quantize

Fit = Callable[[torch.Tensor], torch.Tensor]


def q4_0_reference(weight: torch.Tensor, group_size: int = 32) -> torch.Tensor:
    """llama.cpp's Q4_0 reference quantiser, dequantised: per group d = (the signed weight of
    largest magnitude) / -8, q = min(15, trunc(w / d + 8.5)), w_hat = float16(d) * (q - 8): the
    codes are computed with the float32 d, as ggml does, and only the stored d is rounded."""
    x = weight.float().reshape(-1, group_size)
    extreme = torch.gather(x, 1, x.abs().argmax(dim=1, keepdim=True))
    d = extreme / -8
    inverse = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = torch.clamp(torch.trunc(x * inverse + 8.5), 0, 15)
    return ((q - 8) * d.to(torch.float16).float()).reshape(weight.shape)


def symmetric_search(weight: torch.Tensor, group_size: int, steps: int = 20) -> torch.Tensor:
    """The same layout with the scale chosen for least squared error: scales within 20% of
    extreme / -8 and of extreme / 7 are tried, then the best one refitted by least squares
    with its codes fixed (kept only where that lowers the error)."""
    x = weight.float().reshape(-1, group_size)
    extreme = torch.gather(x, 1, x.abs().argmax(dim=1, keepdim=True))
    best_error = torch.full_like(extreme, float("inf"))
    best_d = extreme / -8
    for k in range(-steps, steps + 1):
        for base in (extreme / -8, extreme / 7):
            d = base * (1 + 0.01 * k)
            d = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
            q = torch.clamp(torch.round(x / d) + 8, 0, 15)
            error = ((x - (q - 8) * d) ** 2).sum(1, keepdim=True)
            better = error < best_error
            best_error, best_d = torch.where(better, error, best_error), torch.where(better, d, best_d)
    centred = torch.clamp(torch.round(x / best_d) + 8, 0, 15) - 8
    refit = (centred * x).sum(1, keepdim=True) / (centred * centred).sum(1, keepdim=True).clamp_min(1e-12)
    refit_error = ((x - centred * refit) ** 2).sum(1, keepdim=True)
    d = torch.where(refit_error < best_error, refit, best_d).to(torch.float16).float()
    safe = torch.where(d == 0, torch.ones_like(d), d)  # an all-zero group: d = 0, codes 8
    q = torch.clamp(torch.round(x / safe) + 8, 0, 15)
    return ((q - 8) * d).reshape(weight.shape)


FITS: dict[str, tuple[float, Fit]] = {
    "asymmetric HQQ, group 64 (ours, the default)": (4.5, lambda w: dequantize(quantize(w, 4, 64, "hqq"))),
    "asymmetric HQQ, group 32 (Q4_1's size)": (5.0, lambda w: dequantize(quantize(w, 4, 32, "hqq"))),
    "symmetric, Q4_0 reference, group 32": (4.5, q4_0_reference),
    "symmetric, least-squares scale, group 32": (4.5, lambda w: symmetric_search(w, 32)),
    "symmetric, least-squares scale, group 64": (4.25, lambda w: symmetric_search(w, 64)),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=32, help="windows per perplexity corpus")
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    if args.limit < 1 or args.seq_len < 8:
        parser.error(f"--limit must be >= 1 and --seq-len >= 8, got {args.limit} and {args.seq_len}")
    loaded = load_model(None, dtype=torch.float32)
    print("| fit | stored bits | ppl_wiki | ppl_lambada | seconds |\n|---|---:|---:|---:|---:|", flush=True)
    for label, (bits, fit) in FITS.items():
        began = time.perf_counter()
        model = copy.deepcopy(loaded.model)
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and ".layers." in name:  # block linears only
                    module.weight.copy_(fit(module.weight))
        records = run_suite(
            model,
            loaded.tokenizer,
            ["ppl_wiki", "ppl_lambada"],
            model_name="embedded",
            plan_hash=label,
            limit=args.limit,
            seq_len=args.seq_len,
            progress=False,
        )
        ppl = {r.task: r.value for r in records}
        seconds = time.perf_counter() - began
        print(
            f"| {label} | {bits:.2f} | {ppl['ppl_wiki']:.2f} | {ppl['ppl_lambada']:.2f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
