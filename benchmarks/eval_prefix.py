"""MMLU 5-shot scored two ways, side by side: every prompt whole (as lm-eval runs it) against
each subject's shared prefix run once (`eval.prefix`, the default). Same model, same requests,
alternating order after a warm-up; prints one row per run, then how far the two ways' scores
are apart (largest log-likelihood difference, answers that change, accuracy).

    python benchmarks/eval_prefix.py                                   # GPU, 57 subjects x 20 items
    python benchmarks/eval_prefix.py --device cpu --subjects 3 --limit 10 --repeats 1
"""

from __future__ import annotations

import argparse
import time

import torch
from eval_dequant_once import (  # benchmarks/, the script's folder
    add_model_arguments,
    require_counts,
    uniform_model,
)

from qradaptor.eval.loglik import loglikelihoods
from qradaptor.eval.mmlu import LETTERS, load_mmlu, mmlu_fewshot, mmlu_prompt, mmlu_subjects
from qradaptor.eval.prefix import PrefixSharing

MODES = {"whole": None, "shared": PrefixSharing()}
"""Mode name -> ``share_prefix``."""


def score(
    built, requests: list[tuple[str, str]], batch_size: int, share_prefix: PrefixSharing | None
) -> tuple[float, int, list[float]]:
    """Seconds, tokens the model embedded, and the log-likelihoods of one pass over ``requests``."""
    seen: list[int] = []
    hook = built.model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(int(args[0].numel()))
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        results = loglikelihoods(
            built.model, built.tokenizer, requests, batch_size=batch_size, progress=False,
            share_prefix=share_prefix,
        )  # fmt: skip
    finally:
        hook.remove()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(seen), [r.logprob for r in results]


def answers(logprobs: list[float]) -> list[int]:
    """The chosen letter per item (first maximum, as evaluate_mmlu)."""
    rows = [logprobs[k : k + len(LETTERS)] for k in range(0, len(logprobs), len(LETTERS))]
    return [row.index(max(row)) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--subjects", type=int, default=57, help="the first N subjects, sorted")
    parser.add_argument("--limit", type=int, default=20, help="items per subject")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating")
    args = parser.parse_args()
    require_counts(parser, args, "--subjects", "--limit", "--batch-size", "--repeats")
    built, described = uniform_model(args)
    items = load_mmlu(mmlu_subjects()[: args.subjects], args.limit)
    shots = {s: mmlu_fewshot(s) for s in dict.fromkeys(item.subject for item in items)}
    requests = [
        (mmlu_prompt(item, shots[item.subject]), f" {letter}") for item in items for letter in LETTERS
    ]
    print(f"{described}, MMLU 5-shot: {len(shots)} subjects, {len(items)} items, batch {args.batch_size}")
    # Warm-up (kernels, allocator, tokeniser) on the first subject whole: its questions form a
    # shared group where the timed runs do (8 questions, the old warm-up, saved too few tokens to
    # group, so the first shared run also paid for the cached-attention kernels).
    first = sum(item.subject == items[0].subject for item in items)
    for share in MODES.values():
        score(built, requests[: first * len(LETTERS)], args.batch_size, share)
    print("| run | mode | seconds | tokens embedded |")
    print("|---:|---|---:|---:|")
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    scores: dict[str, list[float]] = {}
    for run in range(args.repeats):
        for mode in list(MODES) if run % 2 == 0 else list(MODES)[::-1]:
            took, tokens, scores[mode] = score(built, requests, args.batch_size, MODES[mode])
            seconds[mode].append(took)
            print(f"| {run} | {mode} | {took:.1f} | {tokens:,} |", flush=True)
    whole, shared = (sum(seconds[m]) / len(seconds[m]) for m in MODES)
    gap = max(abs(a - b) for a, b in zip(scores["whole"], scores["shared"], strict=True))
    picks = {mode: answers(scores[mode]) for mode in MODES}
    changed = sum(a != b for a, b in zip(picks["whole"], picks["shared"], strict=True))
    acc = {
        mode: sum(p == item.answer for p, item in zip(picks[mode], items, strict=True)) / len(items)
        for mode in MODES
    }
    print(
        f"mean whole {whole:.1f} s, shared {shared:.1f} s: {whole / shared:.2f}x; "
        f"largest |d logprob| {gap:.2e}; answers changed {changed} of {len(items)}; "
        f"acc whole {acc['whole']:.4f}, shared {acc['shared']:.4f}"
    )


if __name__ == "__main__":
    main()
