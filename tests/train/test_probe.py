"""The gradient probe of rank-gradient, on the tiny Llama and GPT-2."""

from __future__ import annotations

import math

import pytest
import torch

from qradaptor.models.structure import inspect_model
from qradaptor.train.probe import gradient_norms

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(vocab: int, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, 16), generator=generator) for _ in range(n)]  # (B, T) each


def test_norms_one_per_block_positive_and_deterministic(tiny_llama) -> None:
    structure = inspect_model(tiny_llama)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    modules_before = [type(m) for m in tiny_llama.modules()]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)

    norms = gradient_norms(tiny_llama, structure, _batches(256), steps=3)

    assert torch.equal(torch.rand(3), expected_draw)  # the caller's random stream is untouched
    assert len(norms) == structure.num_blocks == 3
    assert all(math.isfinite(g) and g > 0 for g in norms)
    assert gradient_norms(tiny_llama, structure, _batches(256), steps=3) == norms
    assert gradient_norms(tiny_llama, structure, _batches(256), steps=3, seed=1) != norms
    # the caller's model is untouched: same modules, same weights, nothing set to train
    assert [type(m) for m in tiny_llama.modules()] == modules_before
    after = tiny_llama.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_norm_is_of_the_mean_gradient(tiny_llama) -> None:
    """Repeating one batch leaves the mean gradient, hence the norms, as they are."""
    structure = inspect_model(tiny_llama)
    batch = _batches(256, n=1)
    once = gradient_norms(tiny_llama, structure, batch, steps=1)
    thrice = gradient_norms(tiny_llama, structure, batch, steps=3)
    assert thrice == pytest.approx(once, rel=1e-5)


def test_rank_changes_the_probe(tiny_llama) -> None:
    """With B = 0, dL/dB = (alpha / r) dL/dy (A x)^T: the rank changes A and the scale."""
    structure = inspect_model(tiny_llama)
    low = gradient_norms(tiny_llama, structure, _batches(256), rank=4, steps=2)
    high = gradient_norms(tiny_llama, structure, _batches(256), rank=16, steps=2)
    assert low != high and all(g > 0 for g in low + high)


def test_quantised_probe_and_gpt2(tiny_llama, tiny_gpt2) -> None:
    structure = inspect_model(tiny_llama)
    full = gradient_norms(tiny_llama, structure, _batches(256), steps=2)
    four = gradient_norms(tiny_llama, structure, _batches(256), bits=4, steps=2)
    assert four != full and all(math.isfinite(g) and g > 0 for g in four)
    gpt2 = gradient_norms(tiny_gpt2, inspect_model(tiny_gpt2), _batches(128), steps=2)
    assert len(gpt2) == 2 and all(math.isfinite(g) and g > 0 for g in gpt2)


@pytest.mark.parametrize(
    ("batches", "kwargs", "message"),
    [
        ([], {}, "batches must hold at least one"),
        ([torch.zeros(2, 4)], {}, r"batches\[0\] must be a \(B, T\) torch.long tensor .*torch.float32"),
        ([torch.zeros(8, dtype=torch.long)], {}, r"batches\[0\] must be a \(B, T\) .*got \(8,\)"),
        ([torch.zeros(2, 4, dtype=torch.long)], {"rank": 0}, "rank must be an integer >= 1, got 0"),
        ([torch.zeros(2, 4, dtype=torch.long)], {"steps": 0}, "steps must be an integer >= 1, got 0"),
        ([torch.zeros(2, 4, dtype=torch.long)], {"bits": 5.5}, "bits must be an integer in 1..8 or 16"),
    ],
)
def test_bad_inputs(tiny_llama, batches: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gradient_norms(tiny_llama, inspect_model(tiny_llama), batches, **kwargs)


def test_structure_of_another_model_is_refused(tiny_llama, llama_factory) -> None:
    other = inspect_model(llama_factory(layers=2))
    with pytest.raises(ValueError, match="was made for another model"):
        gradient_norms(tiny_llama, other, _batches(256))
