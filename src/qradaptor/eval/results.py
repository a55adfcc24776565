"""Evaluation results: one record per (task, metric), as JSON and as a one-screen table."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean, as the harness's ``mean`` and ``mean_stderr``.

    Args:
        values: Per-question scores (at least one).

    Returns:
        ``(mean, stderr)`` with ``stderr = sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n)``,
        ``nan`` when ``n < 2``.

    Raises:
        ValueError: If ``values`` is empty.
    """
    n = len(values)
    if n == 0:
        raise ValueError("values must hold at least one score; got none")
    mu = sum(values) / n
    if n < 2:
        return mu, float("nan")
    return mu, math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


@dataclass(frozen=True)
class EvalRecord:
    """One measured number."""

    task: str
    """Task name, e.g. "arc_easy" or "ppl_wiki"."""
    metric: str
    """"acc", "acc_norm", "ppl", "exact_match_strict", ..."""
    value: float
    """The measurement."""
    stderr: float | None
    """Standard error of the mean where the metric has one (None for perplexity)."""
    n: int
    """Items (or scored tokens, for perplexity) it is computed over."""
    model: str
    """Model source."""
    plan_hash: str
    """Hash of the plan the model was built with."""
    adapter: str | None
    """Adapter folder, if any."""
    seconds: float
    """Wall time of the task (shared by its metrics)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Task-specific context: tokenizer and window for perplexity, backend, limit, ..."""


def to_json(records: Sequence[EvalRecord], meta: dict[str, Any]) -> str:
    """``{"meta": ..., "results": [...]}`` as pretty JSON (NaN written as null)."""

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    rows = [{k: clean(v) for k, v in asdict(r).items()} for r in records]
    return json.dumps({"meta": meta, "results": rows}, indent=2)


def format_table(records: Sequence[EvalRecord]) -> str:
    """A fixed-width table: task, metric, value, ± stderr, n, seconds."""
    lines = [f"{'task':<16} {'metric':<22} {'value':>10} {'± stderr':>9} {'n':>8} {'s':>7}"]
    for r in records:
        value = f"{r.value:.4f}" if abs(r.value) < 1000 else f"{r.value:.1f}"
        stderr = f"{r.stderr:.4f}" if r.stderr is not None else ""
        lines.append(f"{r.task:<16} {r.metric:<22} {value:>10} {stderr:>9} {r.n:>8} {r.seconds:>7.1f}")
    return "\n".join(lines)


def read_results(path: str | os.PathLike[str]) -> tuple[list[EvalRecord], dict[str, Any]]:
    """The records and meta of a results file that ``qra eval --output`` wrote (``to_json``).

    Raises:
        ValueError: naming the file, when it is not such a file (not JSON, no "meta" object or no
            "results" list of records).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"results file {os.fspath(path)!r} cannot be read as JSON: {e}") from None
    meta, rows = (data.get("meta"), data.get("results")) if isinstance(data, dict) else (None, None)
    names = {f.name for f in fields(EvalRecord)}
    if (
        not isinstance(meta, dict)
        or not isinstance(rows, list)
        or not all(isinstance(r, dict) and names >= set(r) >= names - {"details"} for r in rows)
    ):
        raise ValueError(
            f"results file {os.fspath(path)!r} is not what qra eval writes: a JSON object with "
            '"meta" and a "results" list of records'
        )
    return [EvalRecord(**r) for r in rows], meta
