"""Shared fixtures for the data tests: a tiny byte-level BPE tokenizer (no download)."""

from __future__ import annotations

from typing import Any

import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A wetland is an area that is wet for all or part of the year.",
    "Below is an instruction that describes a task. Write a response.",
    "### Instruction:\nAnswer the question.\n\n### Input:\nWhat is it?\n\n### Response:\n",
    "Oxygen is the most abundant chemical element by mass in the Earth's crust.",
]


def _build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """Byte-level BPE (lossless decode) with ``<eos>`` (id 0) and ``<pad>`` (id 1)."""
    return _build_tokenizer()


@pytest.fixture()
def tokenizer_without_pad() -> Any:
    """The tiny tokenizer with no pad token, so padding must fall back to eos."""
    tok = _build_tokenizer()
    tok.pad_token = None
    return tok
