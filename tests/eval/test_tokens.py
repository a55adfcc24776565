"""encode_pair as lm-eval's HFLM tokenizes a request, and encode_pairs giving the same ids with
many texts to one tokenizer call."""

from __future__ import annotations

from typing import Any

import pytest

from qradaptor.eval import tokens
from qradaptor.eval.tokens import encode_pair, encode_pairs

EDGES = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("The quick brown fox ", "jumps"),  # trailing space moves to the continuation
    ("The quick brown fox \n", "jumps"),
    ("<bos>The quick ", "brown fox"),  # starts with the BOS text: no second BOS
    ("", "Berlin is the capital"),  # empty context
    ("", "<eos>Berlin is the capital"),
    ("Paris is the capital of", " France"),
    ("Paris is the capital of", " France"),  # duplicate
    ("Paris is the capital of", " Germany"),  # same context
]


class CountingTokenizer:
    """A tokenizer's stand-in that counts the calls reaching it, of one text or many."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.tokenizer.encode(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.tokenizer(*args, **kwargs)


def test_empty_context_uses_bos_else_eos(tokenizer: Any, bos_tokenizer: Any) -> None:
    cont = "Berlin is the capital"
    ctx, ids = encode_pair(tokenizer, "", cont)
    assert ctx == [tokenizer.eos_token_id]
    assert ids == tokenizer.encode(cont, add_special_tokens=False)
    ctx, ids = encode_pair(bos_tokenizer, "", cont)
    assert ctx == [bos_tokenizer.bos_token_id]
    assert ids == bos_tokenizer.encode(cont, add_special_tokens=False)
    # A continuation that starts with the prefix token: that token becomes the context.
    ctx, ids = encode_pair(tokenizer, "", "<eos>" + cont)
    assert ctx == [tokenizer.eos_token_id]
    assert ids == tokenizer.encode(cont, add_special_tokens=False)


def test_bos_tokenizer_adds_bos_once(bos_tokenizer: Any) -> None:
    ctx, cont = encode_pair(bos_tokenizer, "The quick ", "brown fox")
    assert ctx[0] == bos_tokenizer.bos_token_id and ctx.count(bos_tokenizer.bos_token_id) == 1
    assert ctx + cont == bos_tokenizer.encode("The quick brown fox")
    ctx2, cont2 = encode_pair(bos_tokenizer, "<bos>The quick ", "brown fox")
    assert (ctx2, cont2) == (ctx, cont)


@pytest.mark.parametrize("per_call", [1, 2, 1024])
@pytest.mark.parametrize("bos", [False, True])
def test_encode_pairs_gives_encode_pair_s_ids_in_any_chunking(
    tokenizer: Any, bos_tokenizer: Any, bos: bool, per_call: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "PAIRS_PER_CALL", per_call)
    tok = bos_tokenizer if bos else tokenizer
    assert list(encode_pairs(tok, EDGES)) == [encode_pair(tok, c, x) for c, x in EDGES]


def test_a_chunk_of_requests_is_one_tokenizer_call_per_special_tokens_setting(bos_tokenizer: Any) -> None:
    """The 7 requests with a context are 9 distinct texts (3 contexts, 6 wholes), 2 of them
    starting with <bos>: one call for the 7 that get the default BOS, one for those 2 (one call
    per text would be 9); the 2 empty contexts encode their continuation alone (one call each:
    lm-eval's rule for them differs)."""
    counting = CountingTokenizer(bos_tokenizer)
    list(encode_pairs(counting, EDGES))
    assert counting.calls == 2 + 2


def test_a_bad_request_is_the_error_encode_pair_gives(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="context must be empty or hold non-whitespace text"):
        list(encode_pairs(tokenizer, [("a", " b"), ("   ", "x")]))


@pytest.mark.slow
@pytest.mark.embedded
def test_smollm2_mmlu_prompts_get_the_ids_of_one_call_per_text() -> None:
    """SmolLM2's tokenizer (a fast byte-level BPE) on 5-shot prompts of two subjects: the
    batched ids equal one ``encode`` per text, so MMLU's scores do not move."""
    from qradaptor.eval.mmlu import LETTERS, load_mmlu, mmlu_fewshot, mmlu_prompt
    from qradaptor.models.loading import load_tokenizer

    tok = load_tokenizer(None)
    requests = []
    for subject in ("world_religions", "high_school_physics"):
        shots = mmlu_fewshot(subject)
        items = load_mmlu([subject], limit=8)
        requests += [(mmlu_prompt(item, shots), f" {x}") for item in items for x in LETTERS]
    requests += [("A sentence that ends in spaces   ", "and goes on"), ("", "No context at all.")]
    assert list(encode_pairs(tok, requests)) == [encode_pair(tok, c, x) for c, x in requests]
