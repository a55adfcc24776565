"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .txt corpus of the word tokenizer's words: 20 documents of 40 words (test_profile has
    a smaller one of its own)."""
    rng = random.Random(0)
    docs = [" ".join(rng.choice("abc") for _ in range(40)) for _ in range(20)]
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path
