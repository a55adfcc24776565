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
from typing import Any

from qradaptor.eval.results import EvalRecord
from qradaptor.eval.task import (
    Backend,
    EvalSettings,
    Gsm8kTask,
    MmluTask,
    MultipleChoiceTask,
    PerplexityTask,
    Task,
)

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


USER_PPL_PREFIX = "ppl:"
"""``ppl:SOURCE``: perplexity on a corpus of one's own (a .txt/.json/.jsonl file, a save_to_disk
folder or a dataset id, as ``load_texts`` reads it); a path to an existing file or folder may be
given bare and is named ``ppl:PATH``."""


def _user_corpus(name: str) -> str | None:
    """``ppl:SOURCE`` for a user corpus task name, else None."""
    from pathlib import Path

    if name.startswith(USER_PPL_PREFIX) and len(name) > len(USER_PPL_PREFIX):
        return name
    if name not in ALL_TASKS and name not in GROUPS and Path(name).expanduser().exists():
        return USER_PPL_PREFIX + name
    return None


def resolve_tasks(names: Sequence[str]) -> list[str]:
    """Expands groups and checks names; order kept, duplicates dropped.

    A name that is an existing file or folder, or ``ppl:SOURCE``, is a perplexity task on that
    corpus (``USER_PPL_PREFIX``).

    Raises:
        ValueError: naming the unknown task and listing the available tasks and groups.
    """
    if not names:
        raise ValueError(f"no task given; choose from {list(ALL_TASKS)} or the groups {list(GROUPS)}")
    out: list[str] = []
    for name in names:
        user = _user_corpus(name)
        expanded = (user,) if user else GROUPS.get(name, (name,))
        for task in expanded:
            if task not in ALL_TASKS and not task.startswith(USER_PPL_PREFIX):
                raise ValueError(
                    f"unknown task {task!r}; available tasks: {', '.join(ALL_TASKS)}; "
                    f"groups: {', '.join(GROUPS)}; or perplexity on a corpus of your own: an existing "
                    ".txt/.json/.jsonl file or save_to_disk folder, or ppl:SOURCE"
                )
            if task not in out:
                out.append(task)
    return out


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
    whole_inputs: bool = False,
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
        whole_inputs: run every input whole, as lm-eval does, instead of a prefix that many
            inputs share once (``eval.prefix``; MMLU's 5-shot examples).

    Returns:
        One record per (task, metric).

    Raises:
        ValueError: on an unknown task, missing data, or a bad limit.
    """
    import torch

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents or None, got {limit}")
    if backend not in ("qradaptor", "harness"):
        raise ValueError(f"backend must be 'qradaptor' or 'harness', got {backend!r}")
    names = resolve_tasks(tasks)
    settings = EvalSettings(limit, batch_size, seq_len, stride, backend, seed, progress, whole_inputs)
    records: list[EvalRecord] = []
    for name in names:
        torch.manual_seed(seed)
        start = time.perf_counter()
        metrics = task_of(name).run(model, tokenizer, settings)
        seconds = time.perf_counter() - start  # every metric of a task shares its time
        records += [
            EvalRecord(
                task=name,
                metric=m.metric,
                value=float(m.value),
                stderr=m.stderr,
                n=int(m.n),
                seconds=seconds,
                details=m.details,
                model=model_name,
                plan_hash=plan_hash,
                adapter=adapter,
            )
            for m in metrics
        ]
    return records


def task_of(name: str) -> Task:
    """The ``Task`` behind one of ``ALL_TASKS``."""
    if name in PPL_CORPORA:
        return PerplexityTask(name, *PPL_CORPORA[name])
    if name.startswith(USER_PPL_PREFIX):
        source = name.removeprefix(USER_PPL_PREFIX)
        return PerplexityTask(name, source, f"{source} (the user's corpus, all of it)")
    if name in ZERO_SHOT:
        return MultipleChoiceTask(name)
    if name == "gsm8k":
        return Gsm8kTask()
    if name == "mmlu":
        return MmluTask()
    raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(ALL_TASKS)}")


def zero_shot_average(records: Sequence[EvalRecord], metric: str = "acc") -> float | None:
    """Mean ``metric`` over the seven zero-shot tasks present in ``records`` (None if none)."""
    values = [r.value for r in records if r.task in ZERO_SHOT and r.metric == metric]
    return sum(values) / len(values) if values else None
