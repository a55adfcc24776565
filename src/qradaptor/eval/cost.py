"""What an evaluation will do and about how long it will take here, said before it starts.

The work of each task is counted in model-input tokens, from its own data and tokenizer:
perplexity scores its windows (``windows x seq_len``, the corpus tokenised only as far as the
windows need); a multiple-choice task scores one input per choice, whose mean length is
measured on the first ``SAMPLE`` documents and multiplied out; MMLU one input per question, after
each subject's shared description and shots run once where ``eval.prefix`` groups them. GSM8K
generates up to 256 tokens a question, which token counts do not price: it is named, not priced.

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
    lengths = _lengths(tokenizer, texts)
    return sum(lengths) / max(len(lengths), 1)


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
        return _mmlu_work(tokenizer, settings)
    if name == "gsm8k":
        from qradaptor.eval.gsm8k import load_gsm8k

        return TaskWork(name, f"{len(load_gsm8k(settings.limit)):,} questions generated (not priced)", None)
    raise ValueError(f"unknown task {name!r}")


def _mmlu_work(tokenizer: Any, settings: EvalSettings) -> TaskWork:
    """MMLU: one input per question (its four letters share it); a subject whose questions
    share enough of their description and solved shots runs that head once (``eval.prefix``)."""
    from collections import Counter

    from qradaptor.eval.mmlu import load_mmlu, mmlu_fewshot, mmlu_head, mmlu_prompt

    sharing = settings.share_prefix
    items = load_mmlu(None, settings.limit)
    per_subject = Counter(item.subject for item in items)
    shots = {s: mmlu_fewshot(s) for s in per_subject}
    heads = dict(
        zip(per_subject, _lengths(tokenizer, [mmlu_head(s, shots[s]) for s in per_subject]), strict=True)
    )
    sample = items[:: max(1, len(items) // SAMPLE)]  # across subjects: their questions' lengths differ
    whole = _lengths(tokenizer, [mmlu_prompt(item, shots[item.subject]) for item in sample])
    own = sum(w - heads[item.subject] for w, item in zip(whole, sample, strict=True)) / max(len(sample), 1)
    tokens = 0.0
    alone = 0  # questions of subjects that run whole, batched together
    forwards = shared = 0
    for subject, n in per_subject.items():
        head = heads[subject]
        if sharing is not None and sharing.worth(n, head):
            tokens += head + n * own
            forwards += 1 + math.ceil(n / settings.batch_size)
            shared += 1
        else:
            tokens += n * (head + own)
            alone += n
    forwards += math.ceil(alone / settings.batch_size)
    what = f"{len(items):,} questions (5-shot), {len(items):,} inputs, {shared} shared prefixes"
    return TaskWork("mmlu", what, round(tokens), forwards)


def _lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


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
