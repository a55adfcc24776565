"""Log-likelihoods of (context, continuation) pairs, scored as lm-evaluation-harness does.

For a request ``(c, x)`` tokenized into context ids ``c_1..c_m`` and continuation ids
``x_1..x_n`` (see ``eval.tokens.encode_pair``) the score is

    log p(x | c) = sum_{i=1..n} log softmax(f(c, x_{<i}))[x_i]

and the request is *greedy* when every ``x_i`` is the argmax of its distribution. The
model sees ``(c + x)[:-1]``, left-truncated to ``max_length`` tokens; requests are
deduplicated, requests with the same model input share one forward pass (multiple
choice with one-token answers costs one pass per question), and inputs are batched
longest first with right padding, so the scores agree with lm-eval's ``HFLM`` (0.4.13)
to float tolerance.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qradaptor.eval.prefix import (
    PrefixGroup,
    PrefixSharing,
    batch_cache,
    cache_keyword,
    prefix_cache,
    shared_prefix_groups,
)
from qradaptor.eval.tokens import encode_pairs, prefix_token_id

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_LENGTH = 2048
"""``max_length`` when the config names no context length (lm-eval's HFLM default too)."""


@dataclass(frozen=True)
class Loglik:
    """The score of one (context, continuation) request."""

    logprob: float
    """Sum of the continuation tokens' log-probabilities (natural log, <= 0)."""
    num_tokens: int
    """Number of continuation tokens scored."""
    is_greedy: bool
    """Whether greedy decoding from the context reproduces the continuation exactly."""


def default_max_length(model: Any) -> int:
    """The model's context length from its config, as lm-eval's HFLM reads it.

    Not capped: a cap would truncate long requests differently from the harness and the
    scores would disagree (SmolLM2 says 8192).
    """
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    return DEFAULT_MAX_LENGTH


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    import torch

    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def inference(model: Any) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode`` for the block; the training flag is restored."""
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _forward_params(model: Any) -> frozenset[str]:
    """Keyword names the underlying model's forward takes (a PeftModel passes them on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return frozenset(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):  # builtins, odd wrappers
        return frozenset()


def forward_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    keep_last: int | None = None,
    past_key_values: Any = None,
) -> torch.Tensor:
    """Logits of the last ``keep_last`` positions (all when None), ``(B, K, V)``.

    Uses the model's ``logits_to_keep`` when it has one, so the LM head and its
    ``(B, T, V)`` output are spent only on the positions that are scored. With
    ``past_key_values`` (a cache of P earlier positions, ``eval.prefix``) the inputs follow
    those positions, and ``attention_mask`` covers them too, ``(B, P + T)``.
    """
    params = _forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if past_key_values is not None:
        keyword = cache_keyword(params)
        if keyword is None:
            raise TypeError(f"{type(model).__name__}.forward takes no key/value cache")
        kwargs[keyword] = past_key_values
        kwargs["use_cache"] = True
    elif "use_cache" in params:
        kwargs["use_cache"] = False
    sliced = keep_last is not None and "logits_to_keep" in params
    if sliced:
        kwargs["logits_to_keep"] = keep_last
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T or K, V)
    if keep_last is not None and not sliced:
        logits = logits[:, -keep_last:]
    return logits


def _score_batch(
    model: Any,
    rows: list[tuple[int, ...]],
    spans: list[tuple[int, int, list[int]]],
    pad_id: int,
    device: torch.device,
    past: tuple[Any, int] | None = None,
) -> tuple[list[float], list[bool]]:
    """Score ``spans`` = ``(row, start, continuation)`` against one padded batch of ``rows``.

    ``past``: a batch-1 cache of P shared positions and P; then ``rows`` are the tokens after
    them and each start counts from P.
    """
    import torch

    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, T)
    cache = None
    if past is not None:
        cache = batch_cache(past[0], len(rows))
        mask = torch.cat([torch.ones(len(rows), past[1], dtype=torch.long), mask], dim=1)  # (B, P + T)

    row_of = torch.tensor([s[0] for s in spans])  # (R,)
    start = torch.tensor([s[1] for s in spans])  # (R,) input position predicting token 1
    n_tok = torch.tensor([len(s[2]) for s in spans])  # (R,)
    keep = width - int(start.min())
    logits = forward_logits(
        model, ids.to(device), mask.to(device), keep_last=keep, past_key_values=cache
    )  # (B, K, V)

    seg = torch.repeat_interleave(torch.arange(len(spans)), n_tok)  # (N,) request of each token
    offset = torch.arange(int(n_tok.sum())) - torch.repeat_interleave(n_tok.cumsum(0) - n_tok, n_tok)
    pos = start[seg] + offset - (width - keep)  # (N,) index into the kept positions
    target = torch.tensor([t for s in spans for t in s[2]], dtype=torch.long)  # (N,)
    seg, pos, target, row = seg.to(device), pos.to(device), target.to(device), row_of[seg].to(device)

    logp = logits[row, pos].float().log_softmax(dim=-1)  # (N, V)
    tok_logp = logp.gather(1, target[:, None]).squeeze(1)  # (N,)
    missed = (logp.argmax(dim=-1) != target).long()  # (N,)
    total = torch.zeros(len(spans), dtype=torch.float64, device=device).index_add_(0, seg, tok_logp.double())
    misses = torch.zeros(len(spans), dtype=torch.long, device=device).index_add_(0, seg, missed)
    return total.tolist(), (misses == 0).tolist()


def _batches(
    rows: list[tuple[int, ...]],
    by_input: list[list[int]],
    span_of: list[tuple[int, list[int]]],
    batch_size: int,
    share_prefix: PrefixSharing | None,
    forward_params: frozenset[str],
) -> list[tuple[PrefixGroup | None, list[int]]]:
    """The order of work: batches of whole rows, then each prefix group's batches.

    Within each, rows go longest first, so a batch pads little.
    """
    groups: list[PrefixGroup] = []
    if share_prefix is not None and cache_keyword(forward_params) is not None:
        starts = [min(len(rows[i]) - len(span_of[u][1]) for u in by_input[i]) for i in range(len(rows))]
        groups = shared_prefix_groups(rows, starts, share_prefix)
    grouped = {i for g in groups for i in g.rows}

    def longest_first(indices: Sequence[int]) -> list[int]:
        return sorted(indices, key=lambda i: (-len(rows[i]), rows[i]))

    def chunks(indices: list[int]) -> list[list[int]]:
        return [indices[b : b + batch_size] for b in range(0, len(indices), batch_size)]

    whole = longest_first([i for i in range(len(rows)) if i not in grouped])
    work: list[tuple[PrefixGroup | None, list[int]]] = [(None, c) for c in chunks(whole)]
    for g in groups:
        work += [(g, c) for c in chunks(longest_first(g.rows))]
    return work


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "loglikelihood",
    share_prefix: PrefixSharing | None = PrefixSharing(),  # noqa: B008 (frozen, never mutated)
) -> list[Loglik]:
    """Score ``log p(continuation | context)`` for each request, batched.

    Each request is tokenized by ``eval.tokens.encode_pair``; the model input is
    ``(ctx + cont)[-(max_length + 1):][:-1]`` and the ``n`` continuation tokens are
    scored from the last ``n`` positions (module docstring). Log-softmax runs in
    float32 on the scored positions only (lm-eval's ``softmax_dtype="float32"``; the
    same as its default for float32 models).

    Args:
        model: A causal LM (a PreTrainedModel, PeftModel or quantised one) called as
            ``model(input_ids=..., attention_mask=...)``; put in eval mode for the call.
        tokenizer: Its Hugging Face tokenizer.
        requests: ``(context, continuation)`` pairs; the context may be empty.
        batch_size: Model inputs per forward pass, at least 1.
        max_length: Longest model input in tokens; longer requests lose tokens on the
            left. None: the model's ``max_position_embeddings``, capped at 2048.
        device: Where inputs go; None for the device of the model's first parameter.
            The model is not moved.
        progress: Show progress (with ETA) over the requests: a bar on a terminal, lines in a log.
        desc: Label of the progress bar.
        share_prefix: When inputs that share unscored leading tokens run them once
            (``eval.prefix``; MMLU's 5-shot examples); None runs every input whole, as
            lm-eval does. Models whose forward takes no cache run whole anyway.

    Returns:
        One ``Loglik`` per request, in the order of ``requests``.

    Raises:
        ValueError: If ``batch_size`` or ``max_length`` is below 1, or a request cannot
            be tokenized (see ``eval.tokens.encode_pair``) or has a continuation longer than
            ``max_length`` tokens.
    """
    import torch

    from qradaptor.progress import progress_bar

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length is None:
        max_length = default_max_length(model)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
    device = model_device(model) if device is None else torch.device(device)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad_id if pad_id is not None else prefix_token_id(tokenizer))

    # Unique requests -> unique model inputs; a model input serves every request whose
    # continuation ends right after it, whatever the split between context and continuation.
    unique: dict[tuple[str, str], int] = {}
    index = [unique.setdefault((ctx, cont), len(unique)) for ctx, cont in requests]
    counts = [0] * len(unique)
    for u in index:
        counts[u] += 1
    inputs: dict[tuple[int, ...], int] = {}
    span_of: list[tuple[int, list[int]]] = []  # per unique request: (input id, continuation)
    for (_, cont_text), (ctx, cont) in zip(unique, encode_pairs(tokenizer, list(unique)), strict=True):
        if len(cont) > max_length:
            raise ValueError(
                f"continuation must be at most max_length={max_length} tokens, got {len(cont)} "
                f"for continuation {cont_text[:40]!r}..."
            )
        inp = tuple((ctx + cont)[-(max_length + 1) :][:-1])
        span_of.append((inputs.setdefault(inp, len(inputs)), cont))

    by_input: list[list[int]] = [[] for _ in inputs]
    for u, (i, _) in enumerate(span_of):
        by_input[i].append(u)
    rows = list(inputs)
    params = _forward_params(model)
    batches = _batches(rows, by_input, span_of, batch_size, share_prefix, params)

    logprob = [0.0] * len(unique)
    greedy = [False] * len(unique)
    cached: tuple[PrefixGroup, Any] | None = None  # the group being scored and its prefix's cache
    with (
        inference(model),
        progress_bar(total=len(requests), desc=desc, unit="request", enabled=progress) as bar,
    ):
        for group, chunk in batches:
            past, skip = None, 0
            if group is not None:
                if cached is None or cached[0] is not group:
                    prefix = rows[chunk[0]][: group.length]
                    cached = (group, prefix_cache(model, prefix, device, params))
                past, skip = (cached[1], group.length), group.length
            members = [u for i in chunk for u in by_input[i]]
            spans = []
            for local, i in enumerate(chunk):
                for u in by_input[i]:
                    cont = span_of[u][1]
                    spans.append((local, len(rows[i]) - len(cont) - skip, cont))
            sums, flags = _score_batch(model, [rows[i][skip:] for i in chunk], spans, pad_id, device, past)
            for u, s, g in zip(members, sums, flags, strict=True):
                logprob[u], greedy[u] = s, g
            bar.update(sum(counts[u] for u in members))

    return [Loglik(logprob[u], len(span_of[u][1]), greedy[u]) for u in index]
