"""Training data: seeded order per epoch, batches as a function of the index, held-out split."""

from __future__ import annotations

import pytest
import torch

from qradaptor.data.instructions import IGNORE_INDEX, InstructionExample
from qradaptor.train.data import TokenizedSet, pack_examples, split_heldout, tokenize_examples


def small_set(n: int = 10) -> TokenizedSet:
    return TokenizedSet([([i + 2] * (1 + i % 3), [i + 2] * (1 + i % 3)) for i in range(n)], pad_id=0)


def test_every_epoch_visits_each_example_once_in_a_seeded_order() -> None:
    data = small_set(10)
    per_epoch = data.batches_per_epoch(4)
    assert per_epoch == 3
    firsts = [int(data.batch(i, 4, seed=0)["input_ids"][:, 0].sum()) for i in range(per_epoch)]
    seen = torch.cat([data.batch(i, 4, seed=0)["input_ids"][:, 0] for i in range(per_epoch)])
    assert sorted(seen.tolist()) == list(range(2, 12))
    again = [int(small_set(10).batch(i, 4, seed=0)["input_ids"][:, 0].sum()) for i in range(per_epoch)]
    assert firsts == again  # a fresh object (a resumed run) sees the same batches
    assert data.order(1, 0) != data.order(0, 0)
    assert data.order(0, 1) != data.order(0, 0)


def test_batches_are_right_padded_with_ignored_labels() -> None:
    data = small_set(3)
    batch = data.batch(0, 3, seed=0)
    assert batch["input_ids"].shape == (3, 3)
    mask = batch["attention_mask"].bool()
    assert (batch["labels"][~mask] == IGNORE_INDEX).all()
    assert (batch["input_ids"][~mask] == 0).all()


def test_a_set_with_nothing_to_train_on_is_refused() -> None:
    with pytest.raises(ValueError, match="none of the 2 examples has a token to train on"):
        TokenizedSet([([1, 2], [IGNORE_INDEX, IGNORE_INDEX]), ([3], [IGNORE_INDEX])], pad_id=0)
    with pytest.raises(ValueError, match="at least one example"):
        TokenizedSet([], pad_id=0)


def test_split_heldout() -> None:
    items = list(range(20))
    train, held = split_heldout(items, 5, seed=3)
    assert len(held) == 5 and sorted(train + held) == items
    assert split_heldout(items, 5, seed=3) == (train, held)
    with pytest.raises(ValueError, match="eval_size must be >= 1 and below the 20 examples"):
        split_heldout(items, 20, seed=0)


def test_tokenize_and_pack(word_tokenizer_factory) -> None:
    tok = word_tokenizer_factory()
    examples = [InstructionExample("a b", "", "c c"), InstructionExample("b", "a", "a")]
    data = tokenize_examples(examples, tok, seq_len=64)
    ids, labels = data.examples[0]
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert trained == tok("c c", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert data.digest() == tokenize_examples(examples, tok, seq_len=64).digest()
    assert data.digest() != tokenize_examples(examples[:1], tok, seq_len=64).digest()
    packed = pack_examples(["a b c a b c", "c b a c b a"], tok, seq_len=4)
    assert packed.kind == "text" and all(len(i) == 4 and i == lab for i, lab in packed.examples)
