"""The evaluation suite: perplexity on two corpora, the paper's seven zero-shot tasks, GSM8K, MMLU.

Task names:
    ppl_wiki        perplexity on the test role of BoolQ's Wikipedia passages (data/roles.py: no
                    default profiles or selects plans on it), in the role of WikiText-2 (it is
                    not WikiText-2, which can't be had offline)
    ppl_lambada     perplexity on LAMBADA passages (in the role of C4)
    arc_easy, arc_challenge, piqa, hellaswag, winogrande, boolq, openbookqa
                    zero-shot multiple choice, acc and acc_norm as lm-evaluation-harness
    gsm8k           8-shot chain of thought, greedy, the harness's answer extraction
    mmlu            5-shot, acc
Groups: "suite" (both perplexities and the seven tasks, the paper's Table 1), "zeroshot",
"ppl", "all" (suite + gsm8k + mmlu).

``limit`` caps the documents per task (the harness's ``--limit``), and for perplexity the
number of windows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from qradaptor.eval.results import EvalRecord

PPL_CORPORA: dict[str, tuple[str, str]] = {
    "ppl_wiki": ("embedded:boolq-heldout", "BoolQ Wikipedia passages, test role (not WikiText-2)"),
    "ppl_lambada": ("embedded:lambada", "LAMBADA passages (in the role of C4)"),
}
ZERO_SHOT = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq", "openbookqa")
GENERATIVE = ("gsm8k", "mmlu")
ALL_TASKS = (*PPL_CORPORA, *ZERO_SHOT, *GENERATIVE)
GROUPS: dict[str, tuple[str, ...]] = {
    "suite": (*PPL_CORPORA, *ZERO_SHOT),
    "zeroshot": ZERO_SHOT,
    "ppl": tuple(PPL_CORPORA),
    "all": ALL_TASKS,
}
Backend = Literal["qradaptor", "harness"]


def resolve_tasks(names: Sequence[str]) -> list[str]:
    """Expands groups and checks names; order kept, duplicates dropped.

    Raises:
        ValueError: naming the unknown task and listing the available tasks and groups.
    """
    if not names:
        raise ValueError(f"no task given; choose from {list(ALL_TASKS)} or the groups {list(GROUPS)}")
    out: list[str] = []
    for name in names:
        expanded = GROUPS.get(name, (name,))
        for task in expanded:
            if task not in ALL_TASKS:
                raise ValueError(
                    f"unknown task {task!r}; available tasks: {', '.join(ALL_TASKS)}; "
                    f"groups: {', '.join(GROUPS)}"
                )
            if task not in out:
                out.append(task)
    return out


def _record(
    task: str,
    metric: str,
    value: float,
    stderr: float | None,
    n: int,
    common: dict[str, Any],
    seconds: float,
    **details: Any,
) -> EvalRecord:
    return EvalRecord(
        task=task,
        metric=metric,
        value=float(value),
        stderr=stderr,
        n=int(n),
        seconds=seconds,
        details=details,
        **common,
    )


def run_suite(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    model_name: str,
    plan_hash: str,
    adapter: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    seq_len: int = 512,
    stride: int | None = None,
    backend: Backend = "qradaptor",
    seed: int = 1234,
    progress: bool = True,
) -> list[EvalRecord]:
    """Evaluates an in-memory model on ``tasks`` (names or groups, see module docstring).

    Args:
        model: a causal LM (quantised, PEFT-wrapped or not), in eval mode.
        tokenizer: its tokenizer.
        tasks: task names or groups.
        model_name, plan_hash, adapter: recorded with every result.
        limit: documents per task (windows for perplexity); None for all.
        batch_size: sequences per forward pass.
        seq_len: perplexity window, in tokens.
        stride: perplexity stride (None: non-overlapping windows; smaller: each window scores
            only its last ``stride`` tokens, with the rest as context).
        backend: "qradaptor" (our batched scorer) or "harness" (lm-evaluation-harness itself)
            for the seven zero-shot tasks; both read the same offline files.
        seed: seeds torch before each task (scoring is deterministic; generation is greedy).
        progress: show progress bars.

    Returns:
        One record per (task, metric).

    Raises:
        ValueError: on an unknown task, missing data, or a bad limit.
    """
    import torch

    from qradaptor.data import load_texts
    from qradaptor.eval.multiple_choice import score_task
    from qradaptor.eval.perplexity import perplexity

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents or None, got {limit}")
    if backend not in ("qradaptor", "harness"):
        raise ValueError(f"backend must be 'qradaptor' or 'harness', got {backend!r}")
    names = resolve_tasks(tasks)
    common = {"model": model_name, "plan_hash": plan_hash, "adapter": adapter}
    records: list[EvalRecord] = []
    for task in names:
        torch.manual_seed(seed)
        start = time.perf_counter()
        if task in PPL_CORPORA:
            source, label = PPL_CORPORA[task]
            result = perplexity(
                model,
                tokenizer,
                load_texts(source),
                seq_len=seq_len,
                stride=stride,
                batch_size=batch_size,
                max_windows=limit,
                corpus=label,
                progress=progress,
            )
            seconds = time.perf_counter() - start
            records.append(
                _record(
                    task,
                    "ppl",
                    result.ppl,
                    None,
                    result.tokens,
                    common,
                    seconds,
                    nll=result.nll,
                    windows=result.windows,
                    seq_len=result.seq_len,
                    stride=result.stride,
                    corpus=result.corpus,
                    tokenizer=result.tokenizer,
                )
            )
        elif task in ZERO_SHOT:
            if backend == "harness":
                from qradaptor.eval.harness import run_harness

                mc = run_harness(model, tokenizer, [task], limit=limit, batch_size=batch_size, seed=seed)[
                    task
                ]
            else:
                mc = score_task(model, tokenizer, task, limit=limit, batch_size=batch_size, progress=progress)
            seconds = time.perf_counter() - start
            records.append(
                _record(task, "acc", mc.acc, mc.acc_stderr, mc.n, common, seconds, backend=backend)
            )
            records.append(
                _record(
                    task, "acc_norm", mc.acc_norm, mc.acc_norm_stderr, mc.n, common, seconds, backend=backend
                )
            )
        elif task == "gsm8k":
            from qradaptor.eval.gsm8k import evaluate_gsm8k

            out = evaluate_gsm8k(model, tokenizer, limit=limit, batch_size=batch_size, progress=progress)
            seconds = time.perf_counter() - start
            for metric in ("exact_match_strict", "exact_match_flexible"):
                records.append(
                    _record(
                        task, metric, out[metric], out[f"{metric}_stderr"], out["n"], common, seconds, shots=8
                    )
                )
        else:  # mmlu
            from qradaptor.eval.mmlu import evaluate_mmlu

            out = evaluate_mmlu(
                model, tokenizer, limit_per_subject=limit, batch_size=batch_size, progress=progress
            )
            seconds = time.perf_counter() - start
            records.append(
                _record(
                    task,
                    "acc",
                    out["acc"],
                    out["acc_stderr"],
                    out["n"],
                    common,
                    seconds,
                    shots=5,
                    limit_per_subject=limit,
                )
            )
    return records


def zero_shot_average(records: Sequence[EvalRecord], metric: str = "acc") -> float | None:
    """Mean ``metric`` over the seven zero-shot tasks present in ``records`` (None if none)."""
    values = [r.value for r in records if r.task in ZERO_SHOT and r.metric == metric]
    return sum(values) / len(values) if values else None
