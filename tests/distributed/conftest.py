"""Fixtures of the distributed tests (the pattern and the models trained on it are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every distributed test runs on one torch thread (see ``one_thread``)."""
