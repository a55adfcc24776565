"""Fixtures of the search tests: a tiny Llama trained on a token pattern, and that pattern."""

from __future__ import annotations

import pytest
import torch

T = 32
"""Tokens per pattern window."""


def pattern_ids(rows: int, offset: int) -> torch.Tensor:
    """(rows, T) windows of one period-8 token cycle, each at its own phase.

    Tokens repeat inside the cycle, so the next token depends on context, not only on the
    current one: the blocks (which the plan quantises) matter, not just embedding and head.
    """
    cycle = torch.tensor([3, 41, 3, 97, 41, 3, 150, 97])
    starts = (torch.arange(rows) * 3 + offset)[:, None]  # (rows, 1)
    return cycle[(starts + torch.arange(T)) % len(cycle)]  # (rows, T)


@pytest.fixture(scope="session")
def pattern():
    """``pattern_ids`` itself: ``pattern(rows, offset)`` gives (rows, T) windows."""
    return pattern_ids


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every search test runs on one torch thread (see ``one_thread``)."""


def train_on_pattern(model):
    """Trains every weight of ``model`` on the pattern for 60 Adam steps; returns it frozen."""
    ids = pattern_ids(16, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trained_llama(llama_factory):
    """A tiny 3-block Llama fully trained on the pattern, so quantisation has something to hurt.

    A wider init (0.1) than the default makes the blocks carry the prediction.
    """
    return train_on_pattern(llama_factory(tied=False, initializer_range=0.1))


@pytest.fixture(scope="module")
def trained_llama6(llama_factory):
    """As ``trained_llama`` with 6 blocks: a search space large enough for random plans to differ."""
    return train_on_pattern(llama_factory(tied=False, initializer_range=0.1, layers=6))
