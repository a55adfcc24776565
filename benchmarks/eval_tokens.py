"""Tokenising MMLU 5-shot requests as lm-eval's HFLM does: one call per text against
``eval.tokens.encode_pairs`` (the texts of 1,024 requests to one tokenizer call).

Three ways, ids checked equal, each with the fast tokenizer's thread pool on and off
(``TOKENIZERS_PARALLELISM``; unset, as the GPU scripts leave it, means on):
- ``per request``: ``encode(context)`` and ``encode(context + answer)`` for every request, as
  lm-eval does;
- ``per text``: every distinct text once, one call each (a question's context once);
- ``batched``: ``encode_pairs``, what ``loglikelihoods`` runs.

    python benchmarks/eval_tokens.py --questions 2000     # ms per question, and the speed-ups
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from qradaptor.eval import tokens
from qradaptor.eval.mmlu import LETTERS, load_mmlu, mmlu_fewshot, mmlu_prompt
from qradaptor.models.loading import load_tokenizer


def requests_of(questions: int) -> list[tuple[str, str]]:
    """The 5-shot requests of MMLU's first ``questions`` questions (the pilot's 1,000 a
    subject at most, subjects in order), four answers each."""
    items = load_mmlu(limit=1000)[:questions]
    shots = {item.subject: mmlu_fewshot(item.subject) for item in items}
    return [(mmlu_prompt(item, shots[item.subject]), f" {x}") for item in items for x in LETTERS]


Pairs = list[tuple[list[int], list[int]]]


def per_request(tokenizer: Any, requests: list[tuple[str, str]]) -> Pairs:
    return [tokens.encode_pair(tokenizer, c, x) for c, x in requests]


def per_text(tokenizer: Any, requests: list[tuple[str, str]]) -> Pairs:
    memo: dict[str, list[int]] = {}
    return [tokens.encode_pair(tokenizer, c, x, memo=memo) for c, x in requests]


def batched(tokenizer: Any, requests: list[tuple[str, str]]) -> Pairs:
    return list(tokens.encode_pairs(tokenizer, requests))


WAYS = {"per request": per_request, "per text": per_text, "batched": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=2000, help="MMLU questions (4 requests each)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per way (the best is kept)")
    args = parser.parse_args()
    if args.questions < 1 or args.repeats < 1:
        parser.error(f"--questions and --repeats must be at least 1, got {args.questions} and {args.repeats}")
    tokenizer = load_tokenizer(None)
    requests = requests_of(args.questions)
    questions = len(requests) // len(LETTERS)
    want = per_request(tokenizer, requests[:400])  # warm-up
    print(f"{questions} MMLU questions, {len(requests)} requests, SmolLM2's tokenizer, {os.cpu_count()} CPUs")
    print(f"{'way':<12} {'threads':<8} {'ms/question':>11} {'speed-up':>9}")
    base = None
    for parallel in ("false", "true"):
        os.environ["TOKENIZERS_PARALLELISM"] = parallel  # read by tokenizers at every batch
        for name, way in WAYS.items():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                got = way(tokenizer, requests)
                best = min(best, time.perf_counter() - start)
            assert got[:400] == want, f"{name} gave other ids"
            base = base or best
            ms = 1000 * best / questions
            print(f"{name:<12} {'all' if parallel == 'true' else 'one':<8} {ms:>11.2f} {base / best:>8.2f}x")


if __name__ == "__main__":
    main()
