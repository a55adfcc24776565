"""perplexity against the model's own loss on the same windows, and the strided variant."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from qradaptor.eval.perplexity import PerplexityResult, perplexity

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "",  # skipped
    "A wetland is an area that is wet for all or part of the year. " * 2,
    "Oxygen is the most abundant chemical element by mass in the Earth's crust.",
    "Paris is the capital of France and Berlin is the capital of Germany. " * 2,
]


def stream(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """The documents in order, joined with EOS, as perplexity builds it."""
    ids: list[int] = []
    for text in (t for t in texts if t.strip()):
        if ids:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
    return torch.tensor(ids)


def test_non_overlapping_equals_exp_of_the_models_mean_loss(model: Any, tokenizer: Any) -> None:
    seq_len = 16
    ids = stream(tokenizer, TEXTS)
    n = len(ids) // seq_len
    windows = ids[: n * seq_len].view(n, seq_len)  # (W, T)
    with torch.inference_mode():
        # Every window scores seq_len - 1 tokens, so the mean of the means is the mean.
        losses = [float(model(w[None], labels=w[None]).loss) for w in windows]
    want = sum(losses) / n
    got = perplexity(model, tokenizer, TEXTS, seq_len=seq_len, batch_size=3, corpus="tiny", progress=False)
    assert got.windows == n >= 5
    assert got.tokens == n * (seq_len - 1)
    assert got.nll == pytest.approx(want, rel=1e-5)
    assert got.ppl == pytest.approx(math.exp(want), rel=1e-5)
    assert (got.seq_len, got.stride, got.corpus) == (seq_len, seq_len, "tiny")
    assert got.tokenizer == str(tokenizer.name_or_path)


def test_stride_equal_to_seq_len_is_non_overlapping(model: Any, tokenizer: Any) -> None:
    a = perplexity(model, tokenizer, TEXTS, seq_len=16, progress=False)
    b = perplexity(model, tokenizer, TEXTS, seq_len=16, stride=16, batch_size=2, progress=False)
    assert a.tokens == b.tokens and a.windows == b.windows
    assert a.nll == pytest.approx(b.nll, rel=1e-6)


@pytest.mark.parametrize("stride", [1, 5, 8])
def test_smaller_stride_scores_each_token_once_with_more_context(
    model: Any, tokenizer: Any, stride: int
) -> None:
    seq_len = 16
    ids = stream(tokenizer, TEXTS)
    got = perplexity(model, tokenizer, TEXTS, seq_len=seq_len, stride=stride, batch_size=4, progress=False)
    n = (len(ids) - seq_len) // stride + 1
    end = (n - 1) * stride + seq_len  # end of the last window
    assert got.windows == n and got.stride == stride
    assert got.tokens == end - 1  # every token after the first, once
    # Direct: each token j >= 1 predicted from the window that scores it.
    nll = 0.0
    with torch.inference_mode():
        for k in range(n):
            w = ids[k * stride : k * stride + seq_len]
            logp = model(w[None]).logits[0].log_softmax(-1)  # (T, V)
            first = 1 if k == 0 else max(1, seq_len - stride)
            nll -= float(logp[torch.arange(first - 1, seq_len - 1), w[first:]].sum())
    assert got.nll == pytest.approx(nll / got.tokens, rel=1e-5)


def test_overlap_does_not_change_the_number_of_tokens_covered(model: Any, tokenizer: Any) -> None:
    # Stride 8 covers the same 8k + 8 tokens as stride 16 when both end on the same token,
    # and scores them all once: the count matches the non-overlapping one plus the
    # window-start tokens that only the sliding windows predict.
    seq_len, n = 16, 4
    texts = TEXTS * 4
    flat = perplexity(model, tokenizer, texts, seq_len=seq_len, max_windows=n, progress=False)
    slide = perplexity(
        model, tokenizer, texts, seq_len=seq_len, stride=8, max_windows=2 * n - 1, progress=False
    )
    assert flat.tokens == n * (seq_len - 1)
    assert slide.tokens == n * seq_len - 1 == flat.tokens + n - 1


def test_batch_size_and_max_windows(model: Any, tokenizer: Any) -> None:
    a = perplexity(model, tokenizer, TEXTS, seq_len=8, batch_size=1, progress=False)
    b = perplexity(model, tokenizer, TEXTS, seq_len=8, batch_size=64, progress=False)
    assert a.nll == pytest.approx(b.nll, rel=1e-5)
    c = perplexity(model, tokenizer, TEXTS, seq_len=8, max_windows=2, progress=False)
    assert (c.windows, c.tokens) == (2, 14)


def test_training_flag_is_restored(make_model: Any, tokenizer: Any) -> None:
    m = make_model(len(tokenizer)).train()
    result = perplexity(m, tokenizer, TEXTS, seq_len=8, progress=False)
    assert m.training and isinstance(result, PerplexityResult) and result.ppl > 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 1}, "seq_len must be >= 2"),
        ({"seq_len": 8, "stride": 0}, r"stride must be in \[1, seq_len=8\] or None, got 0"),
        ({"seq_len": 8, "stride": 9}, r"stride must be in \[1, seq_len=8\] or None, got 9"),
        ({"seq_len": 8, "batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"seq_len": 8, "max_windows": 0}, "max_windows must be >= 1 or None, got 0"),
        ({"seq_len": 512}, "seq_len must be <= the model's max_position_embeddings=256, got 512"),
        ({"seq_len": 200}, r"at least seq_len=200 tokens for one window, got \d+ tokens from 4 non-empty"),
    ],
)
def test_rejects_bad_arguments(model: Any, tokenizer: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        perplexity(model, tokenizer, TEXTS, progress=False, **kwargs)


@pytest.mark.slow
def test_smollm2_perplexity_on_boolq_heldout() -> None:
    from qradaptor.data.loading import load_texts
    from qradaptor.models.loading import load_model

    loaded = load_model(None)
    texts = load_texts("embedded:boolq-heldout")
    got = perplexity(
        loaded.model, loaded.tokenizer, texts, seq_len=256, max_windows=2, corpus="boolq", progress=False
    )
    assert (got.windows, got.tokens) == (2, 2 * 255)
    assert 2.0 < got.ppl < 100.0  # a trained 135M model on Wikipedia passages
