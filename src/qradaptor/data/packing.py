"""Pack documents into fixed-length token windows for calibration and perplexity.

The documents are shuffled by seed, tokenized without special tokens, joined into
one stream with the eos id between consecutive documents, and the stream is cut into
non-overlapping windows of ``seq_len`` tokens; the incomplete tail is dropped::

    doc_3 <eos> doc_0 <eos> doc_1 <eos> doc_2   ->   [w_0 | w_1 | ... | w_{N-1}] tail
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CHUNK = 256
"""Documents tokenized per tokenizer call (fast tokenizers batch them in Rust)."""


def token_stream(texts: Sequence[str], tokenizer: Any, needed: int | None = None) -> tuple[list[int], int]:
    """Joins the non-empty documents, in the order given, into one token list with eos between.

    Tokenization stops once ``needed`` tokens are there (None: all of them).

    Returns:
        (the token ids, the number of non-empty documents).

    Raises:
        ValueError: if the tokenizer has no eos token.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            "tokenizer must define eos_token_id (it separates documents), got None on "
            f"{type(tokenizer).__name__}"
        )
    docs = [t for t in texts if t and t.strip()]
    stream: list[int] = []
    for start in range(0, len(docs), _CHUNK):
        for ids in tokenizer(docs[start : start + _CHUNK], add_special_tokens=False)["input_ids"]:
            if stream:
                stream.append(int(eos))
            stream.extend(ids)
        if needed is not None and len(stream) >= needed:
            break
    return stream, len(docs)


def pack_texts(
    texts: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    *,
    num_sequences: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Tokenize, join and cut ``texts`` into ``(N, seq_len)`` token windows.

    Deterministic: the same texts, tokenizer, ``seq_len`` and ``seed`` give the same
    tensor. Tokenization stops once ``num_sequences`` windows are filled, so asking
    for a few windows from a large corpus is cheap.

    Args:
        texts: Documents; empty ones are skipped.
        tokenizer: A Hugging Face tokenizer with an eos token (the separator).
        seq_len: Tokens per window, at least 1.
        num_sequences: Number of windows to return; None for as many as the text
            fills.
        seed: Seed of the document shuffle (``random.Random(seed)``).

    Returns:
        A ``torch.long`` tensor of shape ``(N, seq_len)``.

    Raises:
        ValueError: If ``seq_len`` or ``num_sequences`` is below 1, the tokenizer has
            no eos token, or the texts hold fewer tokens than requested (the message
            gives both counts).
    """
    import torch

    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if num_sequences is not None and num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1 or None, got {num_sequences}")
    docs = [t for t in texts if t and t.strip()]
    random.Random(seed).shuffle(docs)
    needed = None if num_sequences is None else num_sequences * seq_len
    stream, _ = token_stream(docs, tokenizer, needed)

    n_windows = len(stream) // seq_len if num_sequences is None else num_sequences
    if n_windows == 0 or len(stream) < n_windows * seq_len:
        want = max(n_windows, 1)
        raise ValueError(
            f"texts must give at least {want * seq_len} tokens ({want} window(s) of "
            f"seq_len={seq_len}), got {len(stream)} tokens from {len(docs)} non-empty "
            "document(s); pass more text, a smaller seq_len or fewer num_sequences"
        )
    return torch.tensor(stream[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
