"""Batched greedy generation: equal to a hand-written greedy loop, cut at stop strings and eos."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qradaptor.eval.generate import cut_at_stops, greedy_generate

PROMPTS = [
    "The quick brown fox",
    "A wetland is an area that is wet for all or part of the year. Oxygen is",
    "Paris",
    "Q: is the sky blue?\nA:",
    "The capital of Germany is Berlin and the",
]


def _tokenizer() -> Any:
    """Byte-level BPE (lossless decode) with ``<eos>`` (id 0) and ``<pad>`` (id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(PROMPTS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tok() -> Any:
    return _tokenizer()


@pytest.fixture(scope="module")
def llama_of(make_model: Any) -> Any:
    """A Llama over ``tok``'s vocabulary; a wide init so greedy outputs vary token to token."""
    return lambda vocab_size, seed=0: make_model(vocab_size, seed, initializer_range=0.2, bos_token_id=1)


@pytest.fixture(scope="module")
def llama(tok: Any, llama_of: Any) -> Any:
    return llama_of(len(tok))


def _reference(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding one token at a time with full forward passes, no padding, no cache."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, T)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_equals_reference_loop(llama: Any, tok: Any) -> None:
    expected = [_reference(llama, tok, p, 16) for p in PROMPTS]
    got = greedy_generate(llama, tok, PROMPTS, max_new_tokens=16, until=[], batch_size=3, progress=False)
    assert got == expected
    assert len(set(got)) == len(PROMPTS)  # the prompts really lead to different texts
    assert (
        greedy_generate(llama, tok, PROMPTS, max_new_tokens=16, until=[], batch_size=1, progress=False) == got
    )


def test_stops_at_first_until_string(llama: Any, tok: Any) -> None:
    full = greedy_generate(llama, tok, PROMPTS, max_new_tokens=20, until=[], batch_size=5, progress=False)
    stop = full[0][4:6]  # occurs in the first generation, maybe in others too
    got = greedy_generate(llama, tok, PROMPTS, max_new_tokens=20, until=[stop], batch_size=5, progress=False)
    assert got == [text.split(stop)[0] for text in full]
    assert len(got[0]) <= 4 < len(full[0])


def test_batch_ends_early_when_every_row_has_stopped(llama: Any, tok: Any) -> None:
    full = greedy_generate(llama, tok, PROMPTS[:2], max_new_tokens=30, until=[], batch_size=2, progress=False)
    stops = [full[0][2:4], full[1][2:4]]  # both rows stop within their first few tokens
    calls = []
    handle = llama.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = greedy_generate(
            llama, tok, PROMPTS[:2], max_new_tokens=30, until=stops, batch_size=2, progress=False
        )
    finally:
        handle.remove()
    assert got == [cut_at_stops(t, stops) for t in full]
    assert len(calls) < 30


def test_stops_at_eos(tok: Any, llama_of: Any) -> None:
    model = llama_of(len(tok))
    plain = _reference(model, tok, PROMPTS[1], 20)
    # Make eos outscore the token generated third (its logit doubles wherever it is positive).
    third = tok(PROMPTS[1] + plain)["input_ids"][len(tok(PROMPTS[1])["input_ids"]) + 2]
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = 2 * model.lm_head.weight[third]
    expected = _reference(model, tok, PROMPTS[1], 20)
    got = greedy_generate(model, tok, PROMPTS, max_new_tokens=20, until=[], batch_size=5, progress=False)
    assert got[1] == expected
    assert len(expected) < len(plain)


def test_works_with_peft_model(tok: Any, llama_of: Any) -> None:
    from peft import LoraConfig, get_peft_model

    base = llama_of(len(tok), seed=1)
    expected = greedy_generate(base, tok, PROMPTS, max_new_tokens=8, until=[], batch_size=2, progress=False)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    got = greedy_generate(peft_model, tok, PROMPTS, max_new_tokens=8, until=[], batch_size=2, progress=False)
    assert got == expected  # LoRA's B starts at zero


def test_tokenizer_state_is_restored(llama: Any) -> None:
    tok = _tokenizer()
    tok.pad_token = None
    tok.padding_side = "right"
    out = greedy_generate(llama, tok, PROMPTS[:2], max_new_tokens=4, until=[], batch_size=2, progress=False)
    assert len(out) == 2
    assert tok.pad_token is None and tok.padding_side == "right"


def test_cut_at_stops_matches_harness() -> None:
    utils = pytest.importorskip("lm_eval.models.utils")
    cases = [
        ("12. The answer is 3.\n\nQ: next", ["Q:", "</s>", "<|im_end|>"]),
        ("a</s>b Q: c", ["Q:", "</s>"]),
        ("no stop here", ["Q:"]),
        ("x<|im_end|>Q:", ["Q:", "<|im_end|>", ""]),
    ]
    for text, until in cases:
        assert cut_at_stops(text, until) == utils.postprocess_generated_text(text, list(until), None)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"max_new_tokens": 0}, "max_new_tokens"), ({"batch_size": 0}, "batch_size")]
)
def test_rejects_bad_arguments(llama: Any, tok: Any, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        greedy_generate(llama, tok, PROMPTS, until=[], progress=False, **kwargs)


def test_empty_prompts(llama: Any, tok: Any) -> None:
    assert greedy_generate(llama, tok, [], until=["Q:"], progress=False) == []
