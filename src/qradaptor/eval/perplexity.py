"""Perplexity of a causal LM on a token stream cut into fixed-length windows.

Notation: the documents, in the given order, are tokenized without special tokens and
joined with EOS into one stream ``t_0 .. t_{L-1}``. Window ``k`` covers
``t[s_k : s_k + T]`` with ``s_k = k * S`` (``T = seq_len``, ``S = stride``); only whole
windows are used, the tail is dropped. Window ``k`` scores the positions ``j`` in

    P_k = [s_k + 1, s_k + T)                   for k = 0 (or S = T),
    P_k = [s_k + T - S, s_k + T)               for k > 0 and S < T,

each predicted from ``t[s_k : j]``, so with ``S = T`` the windows do not overlap and
the first token of each is context only, and with ``S < T`` every token after ``t_0``
(up to the end of the last window) is scored exactly once with at least ``T - S``
tokens of context (the sliding-window evaluation of Hugging Face's perplexity guide).
With ``N = sum_k |P_k|`` scored tokens,

    NLL = -(1 / N) sum_k sum_{j in P_k} log p(t_j | t[s_k : j]),     PPL = exp(NLL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qradaptor.data.packing import token_stream
from qradaptor.eval.loglik import forward_logits, inference, model_device


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on one corpus, with what it was measured on."""

    ppl: float
    """Perplexity, ``exp(nll)``."""
    nll: float
    """Mean negative log-likelihood per scored token (nats)."""
    tokens: int
    """Number of tokens scored."""
    windows: int
    """Number of windows evaluated."""
    seq_len: int
    """Tokens per window."""
    stride: int
    """Tokens between window starts (``seq_len`` for non-overlapping windows)."""
    corpus: str
    """Name of the text source, as given by the caller."""
    tokenizer: str
    """The tokenizer's ``name_or_path``."""


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    seq_len: int = 512,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    corpus: str = "",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``texts`` (module docstring for the windows and maths).

    Deterministic: the texts are used in the order given, never shuffled; the caller
    chooses them.

    Args:
        model: A causal LM (PreTrainedModel, PeftModel or quantised) called as
            ``model(input_ids=..., attention_mask=...)``; put in eval mode for the call.
        tokenizer: Its Hugging Face tokenizer, with an EOS token.
        texts: Documents; empty ones are skipped.
        seq_len: Tokens per window, at least 2 and at most the model's
            ``max_position_embeddings``.
        stride: Tokens between window starts, 1..seq_len; None or ``seq_len`` for
            non-overlapping windows. A smaller stride scores each window's last
            ``stride`` tokens with more context, at ``seq_len / stride`` times the cost.
        batch_size: Windows per forward pass, at least 1.
        max_windows: Evaluate at most this many windows (the first ones); None for all.
        corpus: Name of the text source, copied into the result.
        progress: Show progress (with ETA) over the windows: a bar on a terminal, lines in a log.

    Returns:
        The perplexity, mean NLL and counts.

    Raises:
        ValueError: If an argument is out of range, the tokenizer has no EOS, or the
            texts give fewer than ``seq_len`` tokens (the message gives both counts).
    """
    import torch

    from qradaptor.progress import progress_bar

    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one context and one scored token), got {seq_len}")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}] or None, got {stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len must be <= the model's max_position_embeddings={limit}, got {seq_len}")

    needed = None if max_windows is None else seq_len + (max_windows - 1) * stride
    stream, n_docs = token_stream(texts, tokenizer, needed)
    if len(stream) < seq_len:
        raise ValueError(
            f"texts must give at least seq_len={seq_len} tokens for one window, got {len(stream)} "
            f"tokens from {n_docs} non-empty document(s); pass more text or a smaller seq_len"
        )
    n_windows = (len(stream) - seq_len) // stride + 1
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)

    ids = torch.tensor(stream, dtype=torch.long)
    starts = torch.arange(n_windows) * stride  # (W,)
    # First scored position inside each window: 1 for the first (or every
    # non-overlapping) window, else T - S.
    first = torch.full((n_windows,), max(1, seq_len - stride), dtype=torch.long)
    first[0] = 1
    device = model_device(model)

    total_nll = 0.0
    total_tokens = 0
    with (
        inference(model),
        progress_bar(total=n_windows, desc="perplexity", unit="window", enabled=progress) as bar,
    ):
        for b in range(0, n_windows, batch_size):
            s = starts[b : b + batch_size]  # (B,)
            f = first[b : b + batch_size]  # (B,)
            window = ids[s[:, None] + torch.arange(seq_len)[None, :]].to(device)  # (B, T)
            keep = seq_len - int(f.min()) + 1  # logits from position min(f) - 1 on
            logits = forward_logits(model, window, torch.ones_like(window), keep_last=keep)  # (B, K, V)
            logits = logits[:, :-1].float()  # (B, K-1, V) position j-1 predicts token j
            target = window[:, seq_len - keep + 1 :]  # (B, K-1)
            # -log softmax(z)[t] = logsumexp(z) - z[t], without a (B, K-1, V) log-prob tensor.
            nll = logits.logsumexp(-1) - logits.gather(-1, target[..., None]).squeeze(-1)  # (B, K-1)
            pos = torch.arange(seq_len - keep + 1, seq_len, device=device)  # (K-1,) token positions
            scored = pos[None, :] >= f.to(device)[:, None]  # (B, K-1)
            total_nll += float(nll.double()[scored].sum())
            total_tokens += int(scored.sum())
            bar.update(len(s))

    mean = total_nll / total_tokens
    return PerplexityResult(
        ppl=math.exp(mean),
        nll=mean,
        tokens=total_tokens,
        windows=n_windows,
        seq_len=seq_len,
        stride=stride,
        corpus=corpus,
        tokenizer=str(getattr(tokenizer, "name_or_path", "")),
    )
