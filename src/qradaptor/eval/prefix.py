"""Model inputs that share a long token prefix, scored with that prefix run once.

MMLU's 5-shot prompts repeat a subject's five solved examples, about 460 of a prompt's 565
tokens (SmolLM2's tokenizer), before every question. lm-eval runs each input whole. Here rows
that share enough leading tokens (``PrefixSharing``), all before their first scored position,
form a group: the shared prefix runs once through the model (batch 1, with a key/value cache),
and each batch of the group runs only its own tokens against a copy of that cache. Each
position attends to the same keys and values as in the whole-input pass, so the scores agree
with it to float tolerance (tests/eval/test_prefix.py), and MMLU's forward passes embed about
a quarter of the tokens (docs/EVAL.md).

Notation: a row is one model input (token ids); its *start* is the first input position
whose logits are scored; a group's *length* P is the number of leading tokens all its rows
share, at most every member's start, so each row's scored positions lie in its own part,
``row[P:]``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CACHE_KEYWORDS = ("cache", "past_key_values")
"""What a Hugging Face forward calls its key/value cache, argument and output alike:
``cache`` since transformers 5.2x (``past_key_values`` deprecated), ``past_key_values`` before."""


@dataclass(frozen=True)
class PrefixSharing:
    """When inputs share a prefix run once (``loglikelihoods(share_prefix=...)``)."""

    min_tokens: int = 128
    """Shortest shared prefix a group may have. MMLU's prompts all open with the same dozen
    tokens of description; this keeps each subject its own group."""
    min_saved: int = 4096
    """Fewest tokens a group must save, (rows - 1) x prefix length. A group costs a forward of
    its own and batches of its rows alone, which on a GPU outweigh a few hundred tokens: BoolQ's
    answer pairs (about 200 tokens each) and a subject of two MMLU questions run whole."""

    def __post_init__(self) -> None:
        if self.min_tokens < 1 or self.min_saved < 0:
            got = f"got {self.min_tokens} and {self.min_saved}"
            raise ValueError(f"share_prefix needs min_tokens >= 1 and min_saved >= 0, {got}")

    def worth(self, rows: int, length: int) -> bool:
        """Whether ``rows`` inputs sharing ``length`` tokens make a group."""
        return rows >= 2 and length >= self.min_tokens and (rows - 1) * length >= self.min_saved


@dataclass(frozen=True)
class PrefixGroup:
    """Rows that share their first ``length`` tokens."""

    length: int
    """Tokens shared by every row, none of them scored (P in the module docstring)."""
    rows: tuple[int, ...]
    """Indices of the rows, at least two."""


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    n = min(len(a), len(b), limit)
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def shared_prefix_groups(
    rows: Sequence[Sequence[int]], starts: Sequence[int], sharing: PrefixSharing
) -> list[PrefixGroup]:
    """Groups of rows that share at least ``sharing.min_tokens`` unscored leading tokens.

    Rows are sorted by their tokens, so rows with a common prefix are neighbours and a run of
    neighbours shares the smallest of its adjacent common prefixes; a run is extended while
    that stays at least ``min_tokens`` (capped by each member's start), and kept as a group if
    it saves at least ``min_saved`` tokens.

    Args:
        rows: Model inputs (token ids).
        starts: Per row, the first position whose logits are scored (1 <= start < len(row)).
        sharing: The thresholds.

    Returns:
        Disjoint groups of at least two rows each; rows in no group are scored whole.

    Raises:
        ValueError: If ``starts`` does not match ``rows``.
    """
    if len(starts) != len(rows):
        raise ValueError(f"starts must give one position per row ({len(rows)}), got {len(starts)}")
    order = sorted(range(len(rows)), key=lambda i: tuple(rows[i]))
    groups: list[PrefixGroup] = []
    k = 0
    while k < len(order):
        members = [order[k]]
        length = starts[order[k]]
        j = k + 1
        while j < len(order):
            nxt = order[j]
            shared = min(_common_length(rows[order[j - 1]], rows[nxt], length), starts[nxt])
            if shared < sharing.min_tokens:
                break
            length = shared
            members.append(nxt)
            j += 1
        if sharing.worth(len(members), length):
            groups.append(PrefixGroup(length, tuple(members)))
        k = j
    return groups


def prefix_cache(model: Any, prefix: Sequence[int], device: Any, forward_params: frozenset[str]) -> Any:
    """The key/value cache of ``prefix`` (batch 1), from one forward pass.

    ``forward_params``: the model forward's keyword names; with ``logits_to_keep`` the LM
    head runs on the last position only (the prefix's logits are not scored).
    """
    import torch

    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)  # (1, P)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": True}
    if "logits_to_keep" in forward_params:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    for name in CACHE_KEYWORDS:
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    raise TypeError(f"{type(model).__name__} returned no cache with use_cache=True")


def batch_cache(cache: Any, batch: int) -> Any:
    """A copy of a batch-1 cache repeated ``batch`` times; the forward extends the copy, not
    ``cache``."""
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(batch)
    return copied


def cache_keyword(forward_params: frozenset[str]) -> str | None:
    """The keyword a forward with these parameter names takes its cache as; None if none."""
    if "use_cache" not in forward_params:
        return None
    return next((name for name in CACHE_KEYWORDS if name in forward_params), None)
