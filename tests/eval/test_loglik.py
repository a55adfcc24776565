"""loglikelihoods against a direct per-request computation and against lm-eval's HFLM."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from qradaptor.eval.loglik import Loglik, loglikelihoods
from qradaptor.eval.tokens import encode_pair

REQUESTS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("The quick brown fox ", "jumps"),  # trailing space moves to the continuation
    ("A wetland is an area", " that is wet for all or part of the year."),
    ("Question: is the sky blue? Answer:", " yes"),
    ("Question: is the sky blue? Answer:", " no"),  # same context, other answer
    ("Paris is the capital of", " France"),
    ("Paris is the capital of", " France"),  # duplicate
    ("Oxygen", " is the most abundant chemical element by mass in the Earth's crust."),
    ("", "Berlin is the capital of Germany."),  # empty context
    ("x", "y"),
]


def reference(model: Any, tokenizer: Any, context: str, continuation: str, max_length: int = 10**6) -> Loglik:
    """One request, unbatched: log_softmax of the model's logits gathered at the continuation."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    full = (ctx + cont)[-(max_length + 1) :]
    with torch.inference_mode():
        logits = model(torch.tensor([full[:-1]])).logits[0]  # (T, V)
    logp = logits.log_softmax(-1)[-len(cont) :]  # (n, V)
    target = torch.tensor(cont)
    return Loglik(
        float(logp.gather(1, target[:, None]).sum()), len(cont), bool((logp.argmax(-1) == target).all())
    )


def assert_close(got: list[Loglik], want: list[Loglik]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.num_tokens == w.num_tokens
        assert g.is_greedy == w.is_greedy
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_unbatched_reference_in_any_batch_size_and_order(
    model: Any, tokenizer: Any, batch_size: int, seed: int
) -> None:
    requests = list(REQUESTS)
    random.Random(seed).shuffle(requests)
    got = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, progress=False)
    assert_close(got, [reference(model, tokenizer, c, x) for c, x in requests])
    assert all(g.logprob < 0 for g in got)


def test_duplicates_and_shared_inputs_give_consistent_scores(model: Any, tokenizer: Any) -> None:
    got = loglikelihoods(model, tokenizer, REQUESTS, batch_size=2, progress=False)
    assert got[5] == got[6]
    assert got[3].logprob != got[4].logprob


def test_padding_side_does_not_change_results(model: Any, make_tokenizer: Any) -> None:
    right, left = make_tokenizer(), make_tokenizer()
    right.padding_side, left.padding_side = "right", "left"
    a = loglikelihoods(model, right, REQUESTS, batch_size=4, progress=False)
    b = loglikelihoods(model, left, REQUESTS, batch_size=4, progress=False)
    assert a == b


def _greedy_text(model: Any, tokenizer: Any, context: str, n: int) -> tuple[str, list[int]] | None:
    """The model's own ``n``-token argmax continuation of ``context`` as text, if it round-trips."""
    ids = tokenizer.encode(context)
    for _ in range(n):
        with torch.inference_mode():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    greedy = ids[-n:]
    text = tokenizer.decode(greedy)
    return (text, greedy) if encode_pair(tokenizer, context, text)[1] == greedy else None


def test_is_greedy_for_the_models_own_argmax_continuation(model: Any, tokenizer: Any) -> None:
    # A random model's argmax may be a byte fragment that does not survive decode and
    # re-encode, so take the first context whose greedy continuation does.
    contexts = [f"{a} {b}" for a in ("The", "A", "Paris", "Oxygen", "Question:") for b in ("is", "of", "the")]
    found = [(c, g) for c in contexts if (g := _greedy_text(model, tokenizer, c, 3)) is not None]
    assert found, "no context gave a greedy continuation that round-trips"
    context, (text, greedy) = found[0]
    # The same continuation with its last token replaced by another is not greedy.
    others = [greedy[:-1] + [t] for t in tokenizer.encode(" is the of yes", add_special_tokens=False)]
    other = next(
        o for o in others if o != greedy and encode_pair(tokenizer, context, tokenizer.decode(o))[1] == o
    )
    got = loglikelihoods(
        model, tokenizer, [(context, text), (context, tokenizer.decode(other))], progress=False
    )
    assert got[0].is_greedy and got[0].num_tokens == 3
    assert not got[1].is_greedy
    assert got[0].logprob > got[1].logprob


def test_truncation_keeps_the_last_tokens(model: Any, tokenizer: Any) -> None:
    max_length = 8
    requests = [(c, x) for c, x in REQUESTS if len(encode_pair(tokenizer, c, x)[1]) <= max_length]
    pairs = [encode_pair(tokenizer, c, x) for c, x in requests]
    assert sum(len(c) + len(x) > max_length + 1 for c, x in pairs) >= 3, "requests must be truncated"
    got = loglikelihoods(model, tokenizer, requests, max_length=max_length, progress=False)
    assert_close(got, [reference(model, tokenizer, c, x, max_length=max_length) for c, x in requests])
    full = loglikelihoods(model, tokenizer, requests, progress=False)
    assert any(abs(g.logprob - f.logprob) > 1e-3 for g, f in zip(got, full, strict=True))


def test_peft_model_scores_like_its_base(model: Any, tokenizer: Any, make_model: Any) -> None:
    from peft import LoraConfig, get_peft_model

    base = make_model(len(tokenizer))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()  # loglikelihoods switches to eval and back
    got = loglikelihoods(peft_model, tokenizer, REQUESTS, batch_size=3, progress=False)
    assert peft_model.training
    assert_close(got, loglikelihoods(model, tokenizer, REQUESTS, progress=False))  # LoRA B = 0


@pytest.mark.parametrize("use_bos", [False, True])
def test_matches_lm_eval_hflm_on_the_tiny_model(
    model: Any, tokenizer: Any, bos_tokenizer: Any, use_bos: bool
) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = bos_tokenizer if use_bos else tokenizer
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
        for i, (c, x) in enumerate(REQUESTS)
    ]
    want = lm.loglikelihood(instances, disable_tqdm=True)
    got = loglikelihoods(model, tok, REQUESTS, batch_size=3, progress=False)
    for (c, x), g, (lp, greedy) in zip(REQUESTS, got, want, strict=True):
        if c:
            assert encode_pair(tok, c, x) == lm._encode_pair(c, x)
        assert g.logprob == pytest.approx(lp, abs=1e-4)
        assert g.is_greedy == greedy


@pytest.mark.parametrize(
    ("kwargs", "requests", "match"),
    [
        ({"batch_size": 0}, [("a", "b")], "batch_size must be >= 1, got 0"),
        ({"max_length": 0}, [("a", "b")], "max_length must be >= 1 or None, got 0"),
        ({}, [("The quick", "")], "continuation must give at least one token"),
        ({}, [("", "")], "continuation must give at least one token"),
        ({"max_length": 3}, [("a", " quick brown fox jumps")], "continuation must be at most max_length=3"),
    ],
)
def test_rejects_bad_arguments(
    model: Any, tokenizer: Any, kwargs: dict[str, Any], requests: list[tuple[str, str]], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        loglikelihoods(model, tokenizer, requests, progress=False, **kwargs)


@pytest.mark.slow
def test_matches_lm_eval_hflm_on_smollm2() -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from qradaptor.data.loading import load_texts
    from qradaptor.eval.mmlu import LETTERS, load_mmlu, mmlu_fewshot, mmlu_prompt
    from qradaptor.eval.prefix import PrefixSharing
    from qradaptor.models.loading import load_model

    loaded = load_model(None)
    passages = load_texts("embedded:lambada", limit=6)
    requests = [(p.rsplit(" ", 1)[0], " " + p.rsplit(" ", 1)[1]) for p in passages]
    requests += [
        ("The capital of France is", " Paris"),
        ("The capital of France is ", "Paris"),
        ("Question: Is water wet?\nAnswer:", " yes"),
        ("", "Hello world, this is a test."),
    ]
    # MMLU 5-shot prompts of one subject share their head (world_religions: 214 tokens, the
    # shortest), which runs once here (eval.prefix) and whole in the harness.
    mmlu = load_mmlu(["world_religions"], limit=2)
    shots = mmlu_fewshot("world_religions")
    prompts = [(mmlu_prompt(item, shots), f" {letter}") for item in mmlu for letter in LETTERS]
    requests += prompts
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=req, idx=i) for i, req in enumerate(requests)
    ]
    want = lm.loglikelihood(instances, disable_tqdm=True)
    sharing = PrefixSharing(min_saved=0)  # 2 questions of a subject save less than the default asks
    got = loglikelihoods(
        loaded.model, loaded.tokenizer, requests, batch_size=3, progress=False, share_prefix=sharing
    )
    embedded: list[int] = []  # what the model embeds for the MMLU prompts, whole then shared
    for share in (None, sharing):
        seen: list[int] = []
        hook = loaded.model.get_input_embeddings().register_forward_hook(
            lambda _m, args, _out, seen=seen: seen.append(int(args[0].numel()))
        )
        loglikelihoods(
            loaded.model, loaded.tokenizer, prompts, batch_size=3, progress=False, share_prefix=share
        )
        hook.remove()
        embedded.append(sum(seen))
    assert embedded[1] < embedded[0] - 150  # the second prompt skipped the ~210 tokens it shares
    for g, (lp, greedy) in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(lp, abs=1e-4)
        assert g.is_greedy == greedy
    assert any(g.is_greedy for g in got)  # " Paris" after "The capital of France is"
