"""Shared prefixes run once: the groups, and scores equal to the whole-input pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qradaptor.eval.loglik import loglikelihoods
from qradaptor.eval.prefix import PrefixGroup, PrefixSharing, shared_prefix_groups

EVERY = PrefixSharing(min_tokens=16, min_saved=0)
"""Share any prefix of 16 tokens or more: the tiny prompts here are short."""
LONG = PrefixSharing(min_tokens=10_000, min_saved=0)
"""A prefix longer than any here: nothing is shared."""

SHARED = (
    "Question: is the sky blue? Answer: yes, because of Rayleigh scattering.\n\n"
    "Paris is the capital of France and Berlin is the capital of Germany.\n\n"
)
QUESTIONS = [
    "The quick brown fox jumps over the lazy dog. Answer:",
    "A wetland is an area that is wet. Answer:",
    "Oxygen is the most abundant element. Answer:",
    "The quick brown fox jumps over the lazy cat. Answer:",  # shares more with the first
]
REQUESTS = [(SHARED + q, f" {letter}") for q in QUESTIONS for letter in "ABCD"] + [
    (SHARED + QUESTIONS[0], " yes, because of Rayleigh scattering."),  # a long continuation
    ("Paris is the capital of", " France"),  # shares nothing: scored whole
]


def test_groups_take_the_longest_prefix_a_run_of_sorted_rows_shares() -> None:
    rows = [(1, 2, 3, 4, 5), (7, 8), (1, 2, 3, 4, 6), (1, 2, 9, 9)]
    starts = [4, 1, 4, 3]
    assert shared_prefix_groups(rows, starts, PrefixSharing(2, 0)) == [PrefixGroup(2, (0, 2, 3))]
    assert shared_prefix_groups(rows, starts, PrefixSharing(3, 0)) == [PrefixGroup(4, (0, 2))]
    assert shared_prefix_groups(rows, starts, PrefixSharing(5, 0)) == []


def test_a_group_stops_before_any_members_first_scored_position() -> None:
    rows = [(1, 2, 3, 4, 5), (1, 2, 3, 4, 6)]
    assert shared_prefix_groups(rows, [4, 2], PrefixSharing(2, 0)) == [PrefixGroup(2, (0, 1))]
    assert shared_prefix_groups(rows, [4, 1], PrefixSharing(2, 0)) == []


def test_a_group_must_save_min_saved_tokens() -> None:
    rows = [(1, 2, 3, 4, 5), (1, 2, 3, 4, 6), (1, 2, 3, 4, 7)]  # 3 rows share 4 tokens: 8 saved
    assert shared_prefix_groups(rows, [4, 4, 4], PrefixSharing(2, 8)) == [PrefixGroup(4, (0, 1, 2))]
    assert shared_prefix_groups(rows, [4, 4, 4], PrefixSharing(2, 9)) == []
    assert shared_prefix_groups(rows[:2], [4, 4], PrefixSharing(2, 8)) == []  # 4 saved


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: PrefixSharing(min_tokens=0),
            "share_prefix needs min_tokens >= 1 and min_saved >= 0, got 0 and 4096",
        ),
        (
            lambda: PrefixSharing(min_saved=-1),
            "share_prefix needs min_tokens >= 1 and min_saved >= 0, got 128 and -1",
        ),
        (
            lambda: shared_prefix_groups([(1, 2)], [], EVERY),
            r"starts must give one position per row \(1\), got 0",
        ),
    ],
)
def test_rejects_bad_arguments(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def count_tokens(model: Any) -> list[int]:
    """Tokens each forward of ``model`` embeds, appended to the returned list."""
    seen: list[int] = []
    embed = model.get_input_embeddings()
    embed.register_forward_hook(lambda _m, args, _out: seen.append(int(args[0].numel())))
    return seen


def assert_same_scores(got: list[Any], want: list[Any], abs_tol: float = 1e-5) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.num_tokens == w.num_tokens
        assert g.is_greedy == w.is_greedy
        assert g.logprob == pytest.approx(w.logprob, abs=abs_tol)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_a_shared_prefix_scores_as_the_whole_inputs_with_fewer_tokens(
    make_model: Any, tokenizer: Any, batch_size: int
) -> None:
    model = make_model(len(tokenizer))
    seen = count_tokens(model)
    whole = loglikelihoods(
        model, tokenizer, REQUESTS, batch_size=batch_size, progress=False, share_prefix=None
    )
    whole_tokens = sum(seen)
    seen.clear()
    shared = loglikelihoods(
        model, tokenizer, REQUESTS, batch_size=batch_size, progress=False, share_prefix=EVERY
    )
    assert_same_scores(shared, whole)
    # The prefix (about 40 tokens) runs once, not once per input (six inputs share it).
    assert sum(seen) < whole_tokens * 0.6


def test_a_prefix_longer_than_every_shared_run_changes_nothing(make_model: Any, tokenizer: Any) -> None:
    model = make_model(len(tokenizer))
    seen = count_tokens(model)
    whole = loglikelihoods(model, tokenizer, REQUESTS, batch_size=4, progress=False, share_prefix=None)
    whole_tokens = sum(seen)
    seen.clear()
    assert (
        loglikelihoods(
            model,
            tokenizer,
            REQUESTS,
            batch_size=4,
            progress=False,
            share_prefix=LONG,
        )
        == whole
    )
    assert sum(seen) == whole_tokens


def test_adapters_and_packed_quantised_layers_see_the_cached_prefix(make_model: Any, tokenizer: Any) -> None:
    from peft import LoraConfig, get_peft_model

    from qradaptor.build import apply_plan
    from qradaptor.plan import Plan

    quantised = apply_plan(make_model(len(tokenizer)), Plan.from_lists([3, 4], [8, 0]))
    torch.manual_seed(0)
    for name, param in quantised.named_parameters():
        if "lora_B" in name:  # nonzero adapters, so they change the scores
            param.data.normal_(0, 0.05)
    peft_dense = get_peft_model(
        make_model(len(tokenizer)),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    for model in (quantised, peft_dense):
        whole = loglikelihoods(model, tokenizer, REQUESTS, batch_size=5, progress=False, share_prefix=None)
        shared = loglikelihoods(model, tokenizer, REQUESTS, batch_size=5, progress=False, share_prefix=EVERY)
        assert_same_scores(shared, whole)


def test_the_default_leaves_a_few_short_shared_prompts_whole(make_model: Any, tokenizer: Any) -> None:
    model = make_model(len(tokenizer))
    seen = count_tokens(model)
    whole = loglikelihoods(model, tokenizer, REQUESTS, batch_size=4, progress=False, share_prefix=None)
    whole_tokens, seen[:] = sum(seen), []
    assert loglikelihoods(model, tokenizer, REQUESTS, batch_size=4, progress=False) == whole
    assert sum(seen) == whole_tokens  # 5 inputs x a 40-token prefix save far below 4,096 tokens


@pytest.mark.parametrize("whole_inputs", [False, True])
def test_qra_eval_whole_inputs_reaches_the_scorer_and_the_results_file(
    cli: Any, tiny_model_dir: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, whole_inputs: bool
) -> None:
    import json

    from qradaptor.eval import loglik

    asked: list[Any] = []
    real = loglik.loglikelihoods

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["share_prefix"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loglik, "loglikelihoods", spy)
    out = tmp_path / "eval.json"
    flag = ["--whole-inputs"] if whole_inputs else []
    args = ["--plan", "uniform:4:0", "--tasks", "arc_easy", "--limit", "2", "--device", "cpu"]
    args.append("--no-progress")
    code, _, err = cli("eval", tiny_model_dir, *args, *flag, "-o", out)
    assert code == 0, err
    want = None if whole_inputs else PrefixSharing()
    assert asked == [want]
    meta = json.loads(out.read_text())["meta"]
    assert meta["shared_prefix"] == (None if whole_inputs else {"min_tokens": 128, "min_saved": 4096})
