"""Fixtures for the evaluation tests: a tiny byte-level BPE tokenizer and a tiny Llama over it."""

from __future__ import annotations

from typing import Any

import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A wetland is an area that is wet for all or part of the year.",
    "Oxygen is the most abundant chemical element by mass in the Earth's crust.",
    "Question: is the sky blue? Answer: yes, because of Rayleigh scattering.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
]


def build_tokenizer(*, bos: bool = False) -> Any:
    """Byte-level BPE with ``<eos>`` (0), ``<pad>`` (1) and ``<bos>`` (2); ``bos=True`` makes
    encode() prepend ``<bos>``, as Llama-style tokenizers do.

    The alphabet is the corpus's characters only (no byte fragments), so every token
    decodes to text that encodes back to it, which the greedy test needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>", "<pad>", "<bos>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    extra: dict[str, str] = {}
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
        )
        extra["bos_token"] = "<bos>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", **extra)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The tiny tokenizer without a BOS token (like SmolLM2's, it adds no special tokens)."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def bos_tokenizer() -> Any:
    """The tiny tokenizer with a ``<bos>`` that encode() prepends (Llama-style)."""
    return build_tokenizer(bos=True)


@pytest.fixture(scope="session")
def make_model(llama_factory: Any) -> Any:
    """``make_model(vocab_size, seed=0, **overrides)``: a fresh 2-block Llama (hidden 64) in eval mode."""

    def build(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
        fields = dict(
            layers=2, tied=False, max_position_embeddings=256, bos_token_id=2, eos_token_id=0, pad_token_id=1
        )
        return llama_factory(vocab_size=vocab_size, seed=seed, **{**fields, **overrides})

    return build


@pytest.fixture(scope="session")
def model(tokenizer: Any, make_model: Any) -> Any:
    return make_model(len(tokenizer))


@pytest.fixture(scope="session")
def make_tokenizer() -> Any:
    """``build_tokenizer`` itself, for tests that need a fresh (mutable) tokenizer."""
    return build_tokenizer
