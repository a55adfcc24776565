"""``qra search``'s option vocabulary: the presets of a search's sizes, the granularities and
strategies, and the checks of its numbers and comma lists (no numpy, no torch: they run
before anything loads)."""

from __future__ import annotations

import json
from typing import Any

from qradaptor.cli.common import parse_int_list
from qradaptor.export.vllm_constraints import SERVE_TARGETS, vllm_bits

GRANULARITIES = ("block", "module")
STRATEGIES = ("halving", "paper")
"""Copy of ``search.definition.STRATEGIES``, which loads numpy (a test checks they agree)."""
PRESETS: dict[str, dict[str, int]] = {
    "quick": {
        "seq_len": 256,
        "steps": 6,
        "batch_size": 2,
        "eval_batches": 4,
        "calibration_samples": 1,
        "candidates": 12,
        "rungs": 1,
        "bayes_iterations": 1,
    },
    "full": {
        "seq_len": 512,
        "steps": 20,
        "batch_size": 4,
        "eval_batches": 4,
        "calibration_samples": 8,
        "candidates": 24,
        "rungs": 2,
        "bayes_iterations": 5,
    },
}
"""--preset: the sizes of a search; quick fits a laptop CPU (one 256-token profile window ranks
blocks like four, Spearman 0.95 at 2 bits: docs/SENSITIVITY.md), full has the landed GPU runs'
profile and proxy sizes (docs/RESULTS.md; the paper profiles on 1,024 C4 samples). quick
also skips the uniform reference plans (four proxy fine-tunes: 145 s of an 8-minute quick
search on 2 cores)."""


def check_positive(**values: int) -> None:
    """ValueError naming the option unless every value is >= 1 (``seq_len`` is --seq-len)."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def parse_choices(text: str, option: str, check: Any) -> tuple[int, ...]:
    """The sorted distinct values of comma list ``text``, each passed through ``check``
    (``plan.check_bits`` or ``check_rank``); ValueError for an empty or bad list."""
    if not text.strip():
        raise ValueError(f"{option} must list at least one value, e.g. {option} 2,3,4,8; got an empty list")
    values = parse_int_list(text, option)
    for value in values:
        check(value, f"every value of {option}")
    return tuple(sorted(set(values)))


def jsonable(obj: Any) -> Any:
    """A (dataclass) config as plain JSON values for config.json; what JSON lacks becomes a string."""
    from dataclasses import asdict, is_dataclass

    return json.loads(json.dumps(asdict(obj) if is_dataclass(obj) else obj, default=str))


def servable_bits(
    serve: str, bits: str | None, choices: tuple[int, ...], granularity: str, fixed_bits: int | None
) -> tuple[int, ...]:
    """The bit choices of a ``--serve`` search, else ValueError naming what the engine cannot serve."""
    if serve not in SERVE_TARGETS:
        raise ValueError(f"--serve must be one of {', '.join(SERVE_TARGETS)}, got {serve!r}")
    if granularity != "block":
        raise ValueError(
            f"--serve vllm searches block granularity (a block's q/k/v and gate/up, which vLLM fuses, "
            f"then share its bits); --granularity {granularity} would give them different bits"
        )
    if fixed_bits is not None:
        vllm_bits((fixed_bits,), "--fixed-bits")
    return vllm_bits(None if bits is None else choices)
