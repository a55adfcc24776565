"""Training examples as token sequences, and the seeded order they are visited in.

Every example is a pair (input_ids, labels) of equal length: an instruction with labels
only on its response (``data.instructions``), or a packed text window with labels equal
to its ids. Micro-batch ``i`` of a run is a pure function of (seed, i):

    epoch  e = i // B_e      where B_e = ceil(N / batch_size) micro-batches per epoch
    order  pi_e = randperm(N) drawn from a generator seeded with (seed, e)
    batch  examples pi_e[j*b : (j+1)*b], j = i mod B_e, right-padded to its longest

so a resumed run needs only its step counter to continue on exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qradaptor.data.instructions import IGNORE_INDEX, collate_instructions

if TYPE_CHECKING:
    import torch

    from qradaptor.data.instructions import InstructionExample

Example = tuple[list[int], list[int]]


@dataclass
class TokenizedSet:
    """Tokenized examples and how they are batched."""

    examples: list[Example]
    """(input_ids, labels) pairs; labels are -100 where no loss is taken."""
    pad_id: int
    """Token id used to pad input_ids."""
    kind: str = "instructions"
    """"instructions" (response-only loss) or "text" (loss on every token)."""
    _orders: dict[tuple[int, int], list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.examples:
            raise ValueError(f"a training set needs at least one example, got none ({self.kind})")
        empty = [
            i for i, (_, labels) in enumerate(self.examples) if all(t == IGNORE_INDEX for t in labels[1:])
        ]
        if len(empty) == len(self.examples):
            raise ValueError(
                f"none of the {len(self.examples)} examples has a token to train on (every label "
                "is -100 after the first position); are the responses empty or cut away by seq_len?"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Micro-batches in one pass over the examples."""
        return math.ceil(len(self.examples) / batch_size)

    def order(self, epoch: int, seed: int) -> list[int]:
        """The example order of ``epoch``: a permutation drawn from a generator seeded by (seed, epoch)."""
        key = (seed, epoch)
        if key not in self._orders:
            import torch

            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            # one order cached: a run walks the epochs in sequence
            self._orders = {key: torch.randperm(len(self.examples), generator=generator).tolist()}
        return self._orders[key]

    def batch(self, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``index`` (0-based over the whole run): input_ids, labels, attention_mask (B, T)."""
        per_epoch = self.batches_per_epoch(batch_size)
        epoch, j = divmod(index, per_epoch)
        rows = self.order(epoch, seed)[j * batch_size : (j + 1) * batch_size]
        return collate_instructions([self.examples[r] for r in rows], self.pad_id)

    def sequential(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """All examples in stored order, in batches: for held-out evaluation."""
        return [
            collate_instructions(self.examples[start : start + batch_size], self.pad_id)
            for start in range(0, len(self.examples), batch_size)
        ]

    def longest(self) -> int:
        """Tokens of the longest example (the padded width of the widest batch)."""
        return max(len(ids) for ids, _ in self.examples)

    def digest(self) -> str:
        """sha256 (16 hex digits) of every example's ids and labels: names the data of a run."""
        digest = hashlib.sha256(self.kind.encode())
        for ids, labels in self.examples:
            digest.update(repr((ids, labels)).encode())
        return digest.hexdigest()[:16]


def tokenize_examples(examples: Sequence[InstructionExample], tokenizer: Any, seq_len: int) -> TokenizedSet:
    """Alpaca examples -> a TokenizedSet with response-only labels, cut to ``seq_len``."""
    from qradaptor.data.instructions import pad_token_id, tokenize_instruction

    pairs = [tokenize_instruction(example, tokenizer, seq_len) for example in examples]
    return TokenizedSet(pairs, pad_token_id(tokenizer), "instructions")


def pack_examples(texts: Sequence[str], tokenizer: Any, seq_len: int, seed: int = 0) -> TokenizedSet:
    """Plain texts -> packed windows of ``seq_len`` tokens with the loss on every token."""
    from qradaptor.data.instructions import pad_token_id
    from qradaptor.data.packing import pack_texts

    windows = pack_texts(texts, tokenizer, seq_len, seed=seed)  # (N, seq_len)
    pairs = [(row, list(row)) for row in windows.tolist()]
    return TokenizedSet(pairs, pad_token_id(tokenizer), "text")


def split_heldout(examples: list[Any], size: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held-out): ``size`` examples drawn by ``seed`` are held out, the rest kept in order.

    Raises:
        ValueError: unless 1 <= size < len(examples).
    """
    import random

    if not 1 <= size < len(examples):
        raise ValueError(
            f"eval_size must be >= 1 and below the {len(examples)} examples so some remain to train "
            f"on, got {size}"
        )
    held = set(random.Random(seed).sample(range(len(examples)), size))
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]
