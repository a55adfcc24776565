"""Zero-shot multiple-choice scoring, computed as lm-evaluation-harness computes it.

For a question with choices i = 1..k, gold g, summed continuation log-probabilities l_i
and choice lengths L_i (characters of the harness's ``doc_to_choice`` string)::

    acc      = [argmax_i l_i       == g]
    acc_norm = [argmax_i l_i / L_i == g]

with ties going to the lowest index (``np.argmax``). Over n questions a score is the mean
of these 0/1 values and its standard error is the harness's ``mean_stderr``,
``s / sqrt(n)`` with ``s^2 = sum_j (x_j - mean)^2 / (n - 1)`` (``nan`` for n < 2, where the
harness reports ``"N/A"``).

The log-likelihood function is injected, so the scoring is testable without a model;
:func:`score_task` wires in :func:`qradaptor.eval.loglik.loglikelihoods`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qradaptor.eval.prefix import PrefixSharing
from qradaptor.eval.results import mean_and_stderr
from qradaptor.eval.tasks import MCItem, load_task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

LoglikFn = Callable[[list[tuple[str, str]]], list[float]]
"""Maps ``(context, continuation)`` requests to the summed log-probability of each continuation."""


@dataclass(frozen=True)
class MCResult:
    """Accuracy of a model on one multiple-choice task."""

    acc: float
    """Fraction of questions whose highest-log-likelihood choice is the gold one."""
    acc_stderr: float
    """Standard error of ``acc``: sample standard deviation / sqrt(n); ``nan`` when n < 2."""
    acc_norm: float
    """As ``acc``, ranking choices by log-likelihood per character of the choice."""
    acc_norm_stderr: float
    """Standard error of ``acc_norm``, as for ``acc_stderr``."""
    n: int
    """Number of questions scored."""


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties (as ``np.argmax``)."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def item_correct(item: MCItem, logprobs: Sequence[float]) -> tuple[float, float]:
    """Whether ``acc`` and ``acc_norm`` pick the gold choice of one item.

    Args:
        item: The question.
        logprobs: Summed log-probability of each choice's continuation, in choice order.

    Returns:
        ``(acc, acc_norm)``, each 1.0 or 0.0.

    Raises:
        ValueError: If there is not one log-probability per choice.
    """
    if len(logprobs) != item.num_choices:
        raise ValueError(f"logprobs must hold one value per choice ({item.num_choices}); got {len(logprobs)}")
    pred = argmax_first(logprobs)
    pred_norm = argmax_first([lp / float(n) for lp, n in zip(logprobs, item.choice_lengths, strict=True)])
    return float(pred == item.gold), float(pred_norm == item.gold)


def evaluate_multiple_choice(items: Sequence[MCItem], loglik_fn: LoglikFn) -> MCResult:
    """Score multiple-choice items with an injected log-likelihood function.

    All requests go to ``loglik_fn`` in one call, so it can batch and sort them freely.

    Args:
        items: The questions, e.g. from :func:`qradaptor.eval.tasks.load_task`.
        loglik_fn: Returns the summed log-probability of each continuation given its context.

    Returns:
        ``acc``, ``acc_norm``, their standard errors and ``n``.

    Raises:
        ValueError: If ``items`` is empty or ``loglik_fn`` returns the wrong number of values.
    """
    if not items:
        raise ValueError("items must hold at least one question; got none")
    requests = [request for item in items for request in item.requests()]
    logprobs = list(loglik_fn(requests))
    if len(logprobs) != len(requests):
        raise ValueError(
            f"loglik_fn must return one value per request ({len(requests)}); got {len(logprobs)}"
        )
    acc, acc_norm = [], []
    start = 0
    for item in items:
        a, a_norm = item_correct(item, logprobs[start : start + item.num_choices])
        acc.append(a)
        acc_norm.append(a_norm)
        start += item.num_choices
    acc_mean, acc_se = mean_and_stderr(acc)
    norm_mean, norm_se = mean_and_stderr(acc_norm)
    return MCResult(
        acc=acc_mean, acc_stderr=acc_se, acc_norm=norm_mean, acc_norm_stderr=norm_se, n=len(items)
    )


def score_task(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    share_prefix: PrefixSharing | None = PrefixSharing(),  # noqa: B008 (frozen, never mutated)
) -> MCResult:
    """Score a model zero-shot on one task with our own log-likelihood code.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        name: A key of :data:`qradaptor.eval.tasks.TASKS`, e.g. ``"arc_easy"``.
        limit: Score only the first ``limit`` documents; ``None`` scores all.
        batch_size: Requests per forward pass.
        progress: Show a progress bar.
        share_prefix: As ``loglikelihoods``: when a prefix that many inputs share runs once
            (``eval.prefix``); None runs every input whole, as lm-eval does.

    Returns:
        The task's ``acc``, ``acc_norm``, their standard errors and ``n``.

    Raises:
        ValueError: If the task is unknown, its data is missing or ``limit`` is below 1.
    """
    from qradaptor.eval.loglik import loglikelihoods

    def loglik_fn(requests: list[tuple[str, str]]) -> list[float]:
        results = loglikelihoods(
            model,
            tokenizer,
            requests,
            batch_size=batch_size,
            progress=progress,
            desc=name,
            share_prefix=share_prefix,
        )
        return [r.logprob for r in results]

    return evaluate_multiple_choice(load_task(name, limit=limit), loglik_fn)
