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
    """Trains every trainable weight of ``model`` on the pattern for 60 Adam steps; returns it frozen."""
    ids = pattern_ids(16, 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
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


def idle_odd_blocks_llama(llama_factory, seed: int = 0):
    """An 8-block Llama whose odd blocks do (almost) nothing, trained on the pattern.

    Weights are drawn here (N(0, 0.1) matrices, unit norms) rather than by transformers' own
    init, so the model does not change with the transformers version. The odd blocks' matrices
    are scaled to 1% and frozen before training: quantising them costs nothing, while the even
    blocks carry the prediction. Plans of one budget therefore differ by where they put their
    bits, which is what a search must find (on a model of identical blocks trained to near-zero
    loss, every plan of a budget scored within 0.1% and random plans beat the search by noise).
    """
    model = llama_factory(tied=False, layers=8)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.fill_(1.0)
        for index, block in enumerate(model.model.layers):
            if index % 2:
                for parameter in block.parameters():
                    if parameter.dim() == 2:
                        parameter.mul_(0.01)
                block.requires_grad_(False)
    return train_on_pattern(model)


@pytest.fixture(scope="module")
def idle_odd_llama8(llama_factory):
    """``idle_odd_blocks_llama``: 8 blocks, the odd ones idle; a model where plans differ."""
    return idle_odd_blocks_llama(llama_factory)
