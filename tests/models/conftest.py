"""Tiny GGUF files written in-process (``tests/conftest.write_tiny_gguf``'s defaults: 2 blocks,
hidden 32, F32 weights), and a private qradaptor cache per test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(name="write_gguf")
def write_gguf_fixture(gguf_writer) -> Callable[..., Path]:
    """``write_tiny_gguf(path, arch=..., linear_dtype=..., head=...)``, for tests that write their own."""
    return gguf_writer


@pytest.fixture
def tiny_gguf(tmp_path: Path, gguf_writer) -> Path:
    """A tied, all-F32 tiny GGUF, alone in its folder."""
    (tmp_path / "g").mkdir()
    return gguf_writer(tmp_path / "g" / "tiny.gguf")


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$QRADAPTOR_CACHE`` for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("QRADAPTOR_CACHE", str(root))
    return root
