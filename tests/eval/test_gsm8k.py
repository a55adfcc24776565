"""GSM8K: data, prompt, answer extraction and scoring, checked by hand and against lm-eval's own code."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from qradaptor.eval.gsm8k import (
    FEWSHOT,
    FLEXIBLE_PATTERN,
    IGNORE_REGEXES,
    INVALID,
    N_TEST,
    STRICT_PATTERN,
    UNTIL,
    GSM8KItem,
    evaluate_gsm8k,
    exact_match,
    extract_answer,
    gsm8k_prompt,
    load_gsm8k,
    mean_stderr,
    score_gsm8k,
)

GENERATIONS = [
    # (generation, strict, flexible)
    ("Janet sells 16 - 3 - 4 = 9 eggs. She makes 9 * 2 = 18. The answer is 18.", "18", "18."),
    ("She makes 9 * 2 = $18 a day, so 18 dollars", INVALID, "18"),
    ("The answer is $1,234.", INVALID, "$1,234."),  # "$" is outside the strict class
    ("So 1,000 + 234 = 1,234. The answer is 1,234.\n", "1,234", "1,234."),  # "." never matches "\n"
    ("The answer is 5. No wait, the answer is 7. The answer is 9.", "5.", "9."),  # first; "." eats " "
    ("The answer is -3.", "-3", "-3."),
    ("The answer is 1,234.5", "1,234.", "1,234.5"),  # the final "." eats the "5"
    ("I do not know.", INVALID, INVALID),
    ("", INVALID, INVALID),
    ("Costs 7 then 8", INVALID, "8"),
]


def _gsm8k_yaml() -> dict[str, Any]:
    lm_eval = pytest.importorskip("lm_eval")
    import yaml

    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k-cot.yaml").read_text())


def test_packaged_test_split() -> None:
    items = load_gsm8k()
    assert len(items) == N_TEST == 1319
    first = items[0]
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer_text.endswith("#### 18")
    assert first.target == "18"
    assert items[1].target == "3"
    assert all(item.target and "####" not in item.target for item in items)
    assert load_gsm8k(limit=2) == items[:2]


def test_prompt_format() -> None:
    prompt = gsm8k_prompt("How many apples?")
    assert prompt.startswith(
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
        "are done, there will be 21 trees. How many trees did the grove workers plant today?\n"
        "A: There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.\n\nQ: If there are 3 cars"
    )
    assert prompt.endswith("23 - 15 is 8. The answer is 8.\n\nQ: How many apples?\nA:")
    assert prompt.count("\nA: ") == 8 and prompt.count("Q: ") == 9


def test_constants_match_the_harness_yaml() -> None:
    cfg = _gsm8k_yaml()
    assert [(s["question"], s["target"]) for s in cfg["fewshot_config"]["samples"]] == list(FEWSHOT)
    assert cfg["fewshot_config"]["sampler"] == "first_n" and cfg["num_fewshot"] == 8
    assert tuple(cfg["generation_kwargs"]["until"]) == UNTIL
    strict, flexible = (
        [step for step in f["filter"] if step["function"] == "regex"][0] for f in cfg["filter_list"]
    )
    assert strict["regex_pattern"] == STRICT_PATTERN.pattern and "group_select" not in strict
    assert flexible["regex_pattern"] == FLEXIBLE_PATTERN.pattern and flexible["group_select"] == -1
    (metric,) = cfg["metric_list"]
    assert tuple(metric["regexes_to_ignore"]) == IGNORE_REGEXES
    assert metric["ignore_case"] is True and metric["ignore_punctuation"] is False


def test_prompt_matches_harness_rendering() -> None:
    """lm-eval's own ``fewshot_context`` on the packaged items, fed through a custom dataset."""
    task_mod = pytest.importorskip("lm_eval.api.task")
    import datasets
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    items = load_gsm8k(limit=2)
    docs = [{"question": i.question, "answer": i.answer_text} for i in items]
    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k-cot.yaml")
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
    task = task_mod.ConfigurableTask(config=cfg)
    for item, doc in zip(items, docs, strict=True):
        assert gsm8k_prompt(item.question) == task.fewshot_context(doc, num_fewshot=8)
        assert item.target == task.doc_to_target(doc)


@pytest.mark.parametrize(("generation", "strict", "flexible"), GENERATIONS)
def test_extract_answer(generation: str, strict: str, flexible: str) -> None:
    assert extract_answer(generation) == (strict, flexible)


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("18", "18", True),
        ("$18", "18", True),
        ("18.", "18", True),
        ("$1,234.", "1234", True),
        ("1,234.", "1234.5", False),
        ("18.0", "18", False),
        (" 18", "18", False),  # no whitespace stripping
        ("-3", "3", False),
        (INVALID, "18", False),
        ("reasoning\n#### 42", "42", True),
        ("ABC", "abc", True),  # ignore_case
    ],
)
def test_exact_match(prediction: str, target: str, expected: bool) -> None:
    assert exact_match(prediction, target) is expected


def test_extraction_and_metric_agree_with_harness_code() -> None:
    cfg = _gsm8k_yaml()
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    (metric,) = cfg["metric_list"]
    metric_kwargs = {k: metric[k] for k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}
    generations = [g for g, _, _ in GENERATIONS]
    targets = ["18", "1234", "1234", "1234.5", "5", "-3", "1234.5", "7", "0", "8"]
    for position, f in enumerate(cfg["filter_list"]):
        regex = next(step for step in f["filter"] if step["function"] == "regex")
        harness_filter = RegexFilter(regex["regex_pattern"], regex.get("group_select", 0))
        regexed = harness_filter.apply([[g] for g in generations], [{}] * len(generations))
        filtered = list(TakeFirstFilter().apply(regexed, []))
        ours = [extract_answer(g)[position] for g in generations]
        assert ours == filtered, f["name"]
        for pred, target in zip(ours, targets, strict=True):
            harness = exact_match_hf_evaluate(predictions=[pred], references=[target], **metric_kwargs)
            assert exact_match(pred, target) == bool(harness["exact_match"]), (pred, target)


def test_score_by_hand() -> None:
    items = [GSM8KItem(f"q{k}", f"... #### {t}", t) for k, t in enumerate(["18", "7", "1234", "5"])]
    generations = [
        "9 * 2 = 18. The answer is 18.",  # strict and flexible right
        "It is 7 apples",  # strict miss, flexible right
        "The answer is $1,234.",  # strict miss ("$"), flexible right
        "The answer is 6.",  # both wrong
    ]
    result = score_gsm8k(items, generations)
    assert result["n"] == 4
    assert result["exact_match_strict"] == pytest.approx(0.25)
    assert result["exact_match_flexible"] == pytest.approx(0.75)
    # std(ddof=1) of [1,0,0,0] and [1,1,1,0] is 0.5; over sqrt(4) that is 0.25.
    assert result["exact_match_strict_stderr"] == pytest.approx(0.25)
    assert result["exact_match_flexible_stderr"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="equal length"):
        score_gsm8k(items, generations[:3])


def test_mean_stderr() -> None:
    assert mean_stderr([1.0, 0.0]) == pytest.approx(0.5)
    assert math.isnan(mean_stderr([1.0]))


def test_rejects_bad_limit() -> None:
    with pytest.raises(ValueError, match="limit must be None or >= 1, got 0"):
        load_gsm8k(limit=0)


@pytest.mark.slow
def test_smollm2_end_to_end() -> None:
    from qradaptor.models import load_model

    loaded = load_model(None)
    start = time.perf_counter()
    result = evaluate_gsm8k(
        loaded.model, loaded.tokenizer, limit=3, batch_size=3, max_new_tokens=64, log_samples=True
    )
    seconds = time.perf_counter() - start
    for sample in result["samples"]:
        print(repr(sample["generation"]), "->", sample["strict"], sample["flexible"], "|", sample["target"])
    print(f"{seconds:.1f} s for 3 items ({seconds / 3:.1f} s/item)")
    assert result["n"] == 3
    for key in ("exact_match_strict", "exact_match_flexible"):
        assert 0.0 <= result[key] <= 1.0
    assert all("Q:" not in s["generation"] for s in result["samples"])
