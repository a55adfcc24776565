"""Tests for qradaptor.data.packing."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qradaptor.data.packing import pack_texts

DOCS = [f"Document number {i} says the quick brown fox jumps over dog {i}." for i in range(40)]


def test_shape_and_dtype(tiny_tokenizer: Any) -> None:
    out = pack_texts(DOCS, tiny_tokenizer, 16, num_sequences=5)
    assert out.shape == (5, 16)
    assert out.dtype == torch.long


def test_same_seed_same_tensor_different_seed_different(tiny_tokenizer: Any) -> None:
    a = pack_texts(DOCS, tiny_tokenizer, 32, seed=3)
    b = pack_texts(DOCS, tiny_tokenizer, 32, seed=3)
    c = pack_texts(DOCS, tiny_tokenizer, 32, seed=4)
    assert torch.equal(a, b)
    assert a.shape == c.shape
    assert not torch.equal(a, c)


def test_stream_is_docs_joined_by_eos_in_seeded_order(tiny_tokenizer: Any) -> None:
    import random

    docs = ["alpha beta", "gamma", "delta epsilon zeta"]
    order = list(docs)
    random.Random(7).shuffle(order)
    expected: list[int] = []
    for i, doc in enumerate(order):
        if i:
            expected.append(tiny_tokenizer.eos_token_id)
        expected += tiny_tokenizer(doc, add_special_tokens=False)["input_ids"]
    seq_len = len(expected) // 2
    out = pack_texts(docs, tiny_tokenizer, seq_len, seed=7)
    assert out.shape == (2, seq_len)
    assert out.flatten().tolist() == expected[: 2 * seq_len]
    # Two separators between three documents, none at the start.
    assert expected.count(tiny_tokenizer.eos_token_id) == 2
    assert expected[0] != tiny_tokenizer.eos_token_id


def test_all_windows_without_num_sequences_drops_only_the_tail(tiny_tokenizer: Any) -> None:
    total = sum(len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DOCS)
    total += len(DOCS) - 1  # separators
    out = pack_texts(DOCS, tiny_tokenizer, 10)
    assert out.shape == (total // 10, 10)


def test_num_sequences_is_a_prefix_of_all_windows(tiny_tokenizer: Any) -> None:
    full = pack_texts(DOCS, tiny_tokenizer, 8, seed=1)
    few = pack_texts(DOCS, tiny_tokenizer, 8, num_sequences=3, seed=1)
    assert torch.equal(few, full[:3])


def test_too_little_text_names_the_counts(tiny_tokenizer: Any) -> None:
    n_tokens = len(tiny_tokenizer("tiny text", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=rf"at least 64 tokens.*got {n_tokens} tokens"):
        pack_texts(["tiny text", "   "], tiny_tokenizer, 64)


def test_too_few_tokens_for_num_sequences(tiny_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match=r"at least 1000000 tokens \(1000 window\(s\)"):
        pack_texts(DOCS, tiny_tokenizer, 1000, num_sequences=1000)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"seq_len": 0}, "seq_len must be >= 1, got 0"),
        ({"seq_len": 8, "num_sequences": 0}, "num_sequences must be >= 1 or None, got 0"),
    ],
)
def test_bad_arguments(tiny_tokenizer: Any, kwargs: dict[str, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        pack_texts(DOCS, tiny_tokenizer, **kwargs)


def test_tokenizer_without_eos(tiny_tokenizer: Any) -> None:
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="eos_token_id"):
        pack_texts(DOCS, NoEos(), 8)
