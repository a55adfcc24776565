"""One protocol for every evaluation task: ``run(model, tokenizer, settings) -> [Metric]``.

Perplexity, zero-shot multiple choice, GSM8K and MMLU each return other shapes from their
own modules; here each is wrapped as a ``Task`` that returns the same ``Metric`` records, so
``suite.run_suite`` is one loop over tasks and a new task (a user's own corpus, say) is one
class, not another branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from qradaptor.eval.prefix import PrefixSharing

Backend = Literal["qradaptor", "harness"]


@dataclass(frozen=True)
class EvalSettings:
    """How the suite runs every task."""

    limit: int | None = None
    """Documents per task (windows for perplexity, documents per subject for MMLU); None: all."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seq_len: int = 512
    """Perplexity window, in tokens."""
    stride: int | None = None
    """Perplexity stride (None: non-overlapping windows)."""
    backend: Backend = "qradaptor"
    """Our batched scorer or lm-evaluation-harness itself, for the zero-shot tasks."""
    seed: int = 1234
    """Passed to the harness (scoring is deterministic; generation is greedy)."""
    progress: bool = True
    """Show progress."""
    whole_inputs: bool = False
    """Run every input whole, as lm-eval does, instead of a prefix that many inputs share once
    (``eval.prefix``: MMLU's 5-shot examples; the scores agree to float tolerance)."""

    @property
    def share_prefix(self) -> PrefixSharing | None:
        """What ``loglikelihoods(share_prefix=...)`` gets: None with ``whole_inputs``."""
        return None if self.whole_inputs else PrefixSharing()


@dataclass(frozen=True)
class Metric:
    """One number a task measured."""

    metric: str
    """e.g. "ppl", "acc", "acc_norm", "exact_match_strict"."""
    value: float
    """The number."""
    stderr: float | None
    """Its standard error (None for perplexity)."""
    n: int
    """Documents (tokens, for perplexity) it is over."""
    details: dict[str, Any] = field(default_factory=dict)
    """What else the record keeps (corpus, windows, shots, backend, ...)."""


class Task(Protocol):
    """An evaluation task: measures a model it is given, never changes it."""

    name: str
    """The task's name in results (``ppl_wiki``, ``arc_easy``, ...)."""

    def run(self, model: Any, tokenizer: Any, settings: EvalSettings) -> list[Metric]:
        """The task's metrics of ``model``."""
        ...


@dataclass(frozen=True)
class PerplexityTask:
    """Perplexity over fixed windows of a text corpus (``load_texts`` source)."""

    name: str
    """e.g. ``ppl_wiki``."""
    source: str
    """What ``load_texts`` reads: ``embedded:NAME``, a file or a dataset."""
    label: str
    """The corpus in words, kept in the record."""

    def run(self, model: Any, tokenizer: Any, settings: EvalSettings) -> list[Metric]:
        from qradaptor.data import load_texts
        from qradaptor.eval.perplexity import perplexity

        result = perplexity(
            model,
            tokenizer,
            load_texts(self.source),
            seq_len=settings.seq_len,
            stride=settings.stride,
            batch_size=settings.batch_size,
            max_windows=settings.limit,
            corpus=self.label,
            progress=settings.progress,
        )
        details = {
            "nll": result.nll,
            "windows": result.windows,
            "seq_len": result.seq_len,
            "stride": result.stride,
            "corpus": result.corpus,
            "tokenizer": result.tokenizer,
        }
        return [Metric("ppl", result.ppl, None, result.tokens, details)]


@dataclass(frozen=True)
class MultipleChoiceTask:
    """A zero-shot multiple-choice task, acc and acc_norm as lm-evaluation-harness scores them."""

    name: str
    """One of ``suite.ZERO_SHOT``."""

    def run(self, model: Any, tokenizer: Any, settings: EvalSettings) -> list[Metric]:
        if settings.backend == "harness":
            from qradaptor.eval.harness import run_harness

            scored = run_harness(
                model,
                tokenizer,
                [self.name],
                limit=settings.limit,
                batch_size=settings.batch_size,
                seed=settings.seed,
            )
            mc = scored[self.name]
        else:
            from qradaptor.eval.multiple_choice import score_task

            mc = score_task(
                model,
                tokenizer,
                self.name,
                limit=settings.limit,
                batch_size=settings.batch_size,
                progress=settings.progress,
                share_prefix=settings.share_prefix,
            )
        backend = {"backend": settings.backend}
        return [
            Metric("acc", mc.acc, mc.acc_stderr, mc.n, backend),
            Metric("acc_norm", mc.acc_norm, mc.acc_norm_stderr, mc.n, dict(backend)),
        ]


@dataclass(frozen=True)
class Gsm8kTask:
    """GSM8K 8-shot chain of thought, greedy, the harness's answer extraction."""

    name: str = "gsm8k"
    """The task's name."""

    def run(self, model: Any, tokenizer: Any, settings: EvalSettings) -> list[Metric]:
        from qradaptor.eval.gsm8k import evaluate_gsm8k

        out = evaluate_gsm8k(
            model, tokenizer, limit=settings.limit, batch_size=settings.batch_size, progress=settings.progress
        )
        return [
            Metric(metric, out[metric], out[f"{metric}_stderr"], out["n"], {"shots": 8})
            for metric in ("exact_match_strict", "exact_match_flexible")
        ]


@dataclass(frozen=True)
class MmluTask:
    """MMLU 5-shot accuracy; ``limit`` counts documents per subject."""

    name: str = "mmlu"
    """The task's name."""

    def run(self, model: Any, tokenizer: Any, settings: EvalSettings) -> list[Metric]:
        from qradaptor.eval.mmlu import evaluate_mmlu

        out = evaluate_mmlu(
            model,
            tokenizer,
            limit_per_subject=settings.limit,
            batch_size=settings.batch_size,
            progress=settings.progress,
            share_prefix=settings.share_prefix,
        )
        details = {"shots": 5, "limit_per_subject": settings.limit}
        return [Metric("acc", out["acc"], out["acc_stderr"], out["n"], details)]
