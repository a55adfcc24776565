"""What an evaluation will do and about how long it will take here, said before it starts.

The work of each task is counted in model-input tokens, from its own data and tokenizer:
perplexity scores its windows (``windows x seq_len``, the corpus tokenised only as far as the
windows need); a multiple-choice task and MMLU score one input per choice, whose mean length is
measured on the first ``SAMPLE`` documents and multiplied out. GSM8K generates up to 256 tokens
a question, which token counts do not price: it is named, not priced.

A forward costs a fixed part (on a packed model every linear is dequantised once per forward,
whatever the batch holds) plus a part per token, so both are timed on the model just now: a
forward of one 8-token row and one of ``batch_size x seq_len`` tokens. Pricing by tokens alone
put 20 ARC and 20 HellaSwag questions at a quarter of their time on a 2-core CPU (their inputs
are 30-40 tokens: the fixed part dominates). Padding to a batch's longest input is not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qradaptor.eval.task import EvalSettings

SAMPLE = 32
"""Documents of a task whose inputs are tokenised to measure their mean length."""


@dataclass(frozen=True)
class TaskWork:
    """One task's work: in words, and in model-input tokens (None: not priced)."""

    name: str
    """The task."""
    what: str
    """e.g. "64 windows of 512 tokens" or "1,000 questions, 4,000 inputs"."""
    tokens: int | None
    """Model-input tokens to score; None for generation."""
    forwards: int = 0
    """Forward passes of up to ``batch_size`` inputs."""


def _mean_tokens(tokenizer: Any, texts: Sequence[str]) -> float:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in ids) / max(len(ids), 1)


def task_work(name: str, tokenizer: Any, settings: EvalSettings) -> TaskWork:
    """Counts one task of the suite (``suite.ALL_TASKS`` or ``ppl:SOURCE``) without a model."""
    from qradaptor.eval.suite import PPL_CORPORA, USER_PPL_PREFIX, ZERO_SHOT

    if name in PPL_CORPORA or name.startswith(USER_PPL_PREFIX):
        from qradaptor.data import load_texts
        from qradaptor.data.packing import token_stream

        source = PPL_CORPORA[name][0] if name in PPL_CORPORA else name.removeprefix(USER_PPL_PREFIX)
        seq_len, limit = settings.seq_len, settings.limit
        stride = settings.stride or seq_len
        needed = None if limit is None else seq_len + (limit - 1) * stride
        stream, _ = token_stream(load_texts(source), tokenizer, needed)
        windows = max(0, (len(stream) - seq_len) // stride + 1)
        windows = windows if limit is None else min(windows, limit)
        batches = math.ceil(windows / settings.batch_size)
        return TaskWork(name, f"{windows:,} windows of {seq_len} tokens", windows * seq_len, batches)
    if name in ZERO_SHOT:
        from qradaptor.eval.tasks import load_task

        items = load_task(name, limit=settings.limit)
        inputs = [
            (
                item.contexts[min(i, len(item.contexts) - 1)],
                item.continuations[min(i, len(item.continuations) - 1)],
            )
            for item in items
            for i in range(max(len(item.contexts), len(item.continuations)))
        ]
        sample = [ctx + cont for ctx, cont in inputs[: SAMPLE * 4]]
        tokens = round(len(inputs) * _mean_tokens(tokenizer, sample)) if inputs else 0
        batches = math.ceil(len(inputs) / settings.batch_size)
        return TaskWork(name, f"{len(items):,} questions, {len(inputs):,} inputs", tokens, batches)
    if name == "mmlu":
        from collections import Counter

        from qradaptor.eval.mmlu import load_mmlu, mmlu_fewshot, mmlu_head, mmlu_prompt

        # One input per question (its four letters share it), and each subject's description
        # and solved shots run once (eval.prefix), then its questions in batches.
        items = load_mmlu(None, settings.limit)
        per_subject = Counter(item.subject for item in items)
        shots = {s: mmlu_fewshot(s) for s in per_subject}
        heads = {s: mmlu_head(s, shots[s]) for s in per_subject}
        sample = items[:SAMPLE]
        whole = _mean_tokens(tokenizer, [mmlu_prompt(i, shots[i.subject]) for i in sample])
        own = whole - _mean_tokens(tokenizer, [heads[i.subject] for i in sample])
        head_tokens = _mean_tokens(tokenizer, list(heads.values())) * len(heads)
        tokens = round(head_tokens + len(items) * own) if items else 0
        # A subject of one question has nothing to share: its prompt runs whole.
        forwards = sum((n > 1) + math.ceil(n / settings.batch_size) for n in per_subject.values())
        what = f"{len(items):,} questions (5-shot) after {len(heads)} shared prefixes"
        return TaskWork(name, what, tokens, forwards)
    if name == "gsm8k":
        from qradaptor.eval.gsm8k import load_gsm8k

        return TaskWork(name, f"{len(load_gsm8k(settings.limit)):,} questions generated (not priced)", None)
    raise ValueError(f"unknown task {name!r}")


def forward_cost(model: Any, batch_size: int, seq_len: int, vocab_size: int) -> tuple[float, float]:
    """(seconds per forward, seconds per token): a forward of one 8-token row (after a warm-up
    of the same) and one of ``batch_size x seq_len`` random tokens, timed on ``model``."""
    import torch

    from qradaptor.eval.loglik import inference, model_device

    device = model_device(model)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    def timed(batch: Any) -> float:
        began = time.perf_counter()
        model(input_ids=batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    with inference(model):
        timed(ids[:1, :8])  # first-call allocations and kernel choice
        fixed = timed(ids[:1, :8])
        full = timed(ids)
    return fixed, max(full - fixed, 0.0) / max(ids.numel() - 8, 1)


def describe(
    works: Sequence[TaskWork], per_forward: float, per_token: float, batch_size: int, seq_len: int
) -> str:
    """One line: each task's work, then the estimated minutes of what is priced."""
    priced = [w for w in works if w.tokens is not None]
    tokens = sum(w.tokens or 0 for w in priced)
    forwards = sum(w.forwards for w in priced)
    minutes = math.ceil((forwards * per_forward + tokens * per_token) / 60)
    unpriced = [w.name for w in works if w.tokens is None]
    tail = f"; {', '.join(unpriced)} not priced (generation)" if unpriced else ""
    return (
        f"this evaluation: {'; '.join(f'{w.name} {w.what}' for w in works)}; about {minutes} min on this "
        f"device for {tokens:,} tokens in {forwards:,} forwards (a forward of {batch_size} x {seq_len} "
        f"tokens took {per_forward + per_token * (batch_size * seq_len - 8):.2f} s and one of 8 tokens "
        f"{per_forward:.2f} s, measured just now){tail}"
    )


def eval_line(model: Any, tokenizer: Any, tasks: Sequence[str], settings: EvalSettings) -> str:
    """The suite's work (``task_work`` per task) priced on ``model`` just now."""
    from qradaptor.eval.suite import resolve_tasks

    works = [task_work(name, tokenizer, settings) for name in resolve_tasks(tasks)]
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer))
    per_forward, per_token = forward_cost(model, settings.batch_size, settings.seq_len, vocab)
    return describe(works, per_forward, per_token, settings.batch_size, settings.seq_len)
