"""Requests tokenized exactly as lm-evaluation-harness's ``HFLM`` tokenizes them, many at a time.

``encode_pair`` is ``HFLM._encode_pair`` for one ``(context, continuation)`` request;
``encode_pairs`` gives the same ids for many, with the texts of a chunk of requests
tokenized in one tokenizer call. A fast tokenizer runs such a call (its ``encode_batch``) on
every core unless ``TOKENIZERS_PARALLELISM=false``; a call per text runs on one. MMLU 5-shot
is 54,032 requests of about 565 tokens, so this is where its tokenizing time goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

PAIRS_PER_CALL = 1024
"""Requests whose texts ``encode_pairs`` tokenizes in one call: large enough to keep every
core busy, small enough that the chunk's ids (about 36 bytes a token as Python ints) stay a
few hundred MB at MMLU's 565 tokens a text."""


def prefix_token_id(tokenizer: Any) -> int:
    """The token that stands in for an empty context: BOS, else EOS (as ``HFLM``)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    token = bos if bos is not None else getattr(tokenizer, "eos_token_id", None)
    if token is None:
        raise ValueError(
            "tokenizer must define bos_token_id or eos_token_id (an empty context is "
            f"scored after it), got neither on {type(tokenizer).__name__}"
        )
    return int(token)


def _prefix_text(tokenizer: Any) -> str:
    return tokenizer.decode(prefix_token_id(tokenizer))


def _encode_kwargs(text: str, prefix_text: str) -> dict[str, bool]:
    """``HFLM.tok_encode``'s rule: the tokenizer's default special tokens (a Llama-style
    tokenizer's BOS), except for a text that already starts with the prefix token's text, which
    gets no second one."""
    return {"add_special_tokens": False} if text.startswith(prefix_text) else {}


def _tok_encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """``HFLM.tok_encode``: ``_encode_kwargs``'s rule unless ``add_special_tokens`` is given."""
    if add_special_tokens is None:
        kwargs = _encode_kwargs(text, _prefix_text(tokenizer))
    else:
        kwargs = {"add_special_tokens": add_special_tokens}
    return list(tokenizer.encode(text, **kwargs))


def encode_texts(tokenizer: Any, texts: Iterable[str], memo: dict[str, list[int]]) -> None:
    """Put each text's ``_tok_encode`` ids into ``memo``, the texts not in it in one call per
    special-tokens setting.

    A fast tokenizer's ``encode`` is its ``encode_batch`` of one text, so the ids are the
    same as one call per text (tests/eval/test_tokens.py checks it on MMLU's prompts).
    """
    prefix_text = _prefix_text(tokenizer)
    by_kwargs: dict[tuple[tuple[str, bool], ...], list[str]] = {}
    for text in dict.fromkeys(texts):
        if text not in memo:
            by_kwargs.setdefault(tuple(_encode_kwargs(text, prefix_text).items()), []).append(text)
    for kwargs, group in by_kwargs.items():
        memo.update(zip(group, map(list, tokenizer(group, **dict(kwargs))["input_ids"]), strict=True))


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    """``HFLM``: the context's trailing whitespace moves to the front of the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces == 0:
        return context, continuation
    return context[:-n_spaces], context[-n_spaces:] + continuation


def encode_pair(
    tokenizer: Any, context: str, continuation: str, *, memo: dict[str, list[int]] | None = None
) -> tuple[list[int], list[int]]:
    """Tokenize a request exactly as lm-eval's ``HFLM.loglikelihood`` does.

    * Trailing whitespace of the context moves to the front of the continuation.
    * ``whole = encode(context + continuation)``, ``ctx = encode(context)`` and the
      continuation is ``whole[len(ctx):]``, so merges across the boundary follow the
      tokenizer, with its default special tokens (a BOS for Llama-style tokenizers).
    * An empty context becomes ``[prefix]`` (BOS, else EOS) and the continuation is
      encoded without special tokens; if it already starts with the prefix token, that
      token is the context instead.

    Args:
        tokenizer: A Hugging Face tokenizer.
        context: The conditioning text; may be empty.
        continuation: The text to score.
        memo: Texts already encoded (``encode_texts``), read and filled here, so the
            requests of one multiple-choice question encode their shared context once.

    Returns:
        ``(context_ids, continuation_ids)``, both non-empty.

    Raises:
        ValueError: If the continuation gives no tokens, or the context is whitespace
            only and encodes to nothing (lm-eval asserts on both).
    """

    def encoded(text: str) -> list[int]:
        ids = None if memo is None else memo.get(text)
        if ids is None:
            ids = _tok_encode(tokenizer, text)
            if memo is not None:
                memo[text] = ids
        return ids

    if context == "":
        cont = _tok_encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        ctx, cont = ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    else:
        context, continuation = _move_spaces(context, continuation)
        ctx = encoded(context)
        cont = encoded(context + continuation)[len(ctx) :]
    if not ctx:
        raise ValueError(
            f"context must be empty or hold non-whitespace text that gives tokens, got {context!r}"
        )
    if not cont:
        raise ValueError(
            f"continuation must give at least one token after the context, got {continuation!r} "
            f"(context {context[-40:]!r})"
        )
    return ctx, cont


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[list[int], list[int]]]:
    """``encode_pair`` of each ``(context, continuation)``, in order, the texts of
    ``PAIRS_PER_CALL`` requests at a time tokenized in one call (``encode_texts``).

    Raises:
        ValueError: As ``encode_pair``, when the iteration reaches the bad request.
    """
    for start in range(0, len(pairs), PAIRS_PER_CALL):
        chunk = pairs[start : start + PAIRS_PER_CALL]
        memo: dict[str, list[int]] = {}  # one chunk's texts: MMLU's 54,032 would take GBs
        texts = []
        for context, continuation in chunk:
            if context != "":
                context, continuation = _move_spaces(context, continuation)
                texts += (context, context + continuation)
        encode_texts(tokenizer, texts, memo)
        for context, continuation in chunk:
            yield encode_pair(tokenizer, context, continuation, memo=memo)
