"""Resolve a user-given data source into texts or instruction examples.

A ``source`` string is read as, in this order:

1. ``None``: the embedded default (the calibration role of the Wikipedia passages of
   DROP and CoQA for text, the QA mix for instructions);
2. ``embedded:<name>``: an embedded corpus (text only; see ``EMBEDDED_TEXTS``);
3. an existing ``.txt`` file (documents separated by blank lines; text only), a
   ``.json`` file (a list of objects or strings), a ``.jsonl`` file (one object or
   string per line), or a directory written by ``Dataset.save_to_disk``;
4. anything else: a Hugging Face dataset id for ``datasets.load_dataset``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from qradaptor.data.corpora import DEFAULT_CALIBRATION, EMBEDDED_TEXTS
from qradaptor.data.instructions import InstructionExample

EMBEDDED_PREFIX = "embedded:"
"""Prefix that selects an embedded text corpus, e.g. ``embedded:wiki-calibration``."""

INSTRUCTION_COLUMNS = ("instruction", "output")
"""Columns every instruction record needs; ``input`` is optional (empty if absent)."""


def _accepted(kind: str) -> str:
    names = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_TEXTS)
    if kind == "text":
        return (
            f"accepted sources are None (embedded:{DEFAULT_CALIBRATION}), {names}, "
            "a .txt/.json/.jsonl file, a save_to_disk directory or a Hugging Face dataset id"
        )
    return (
        "accepted sources are None (embedded QA mix), an Alpaca-style .json (list) or "
        ".jsonl file, a save_to_disk directory or a Hugging Face dataset id, with "
        "columns instruction, output and optionally input"
    )


def _read_utf8(path: Path) -> str:
    """The file's text; a binary or wrongly encoded file is one error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"source file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
            "is it the right file, or truncated?"
        ) from None


def _read_json_records(path: Path) -> list[Any]:
    text = _read_utf8(path)
    lines = enumerate(text.splitlines(), start=1) if path.suffix == ".jsonl" else [(0, text)]
    parsed = []
    for number, chunk in lines:
        try:
            if chunk.strip() or not number:
                parsed.append(json.loads(chunk))
        except json.JSONDecodeError as err:
            where = f" (line {number})" if number else ""
            raise ValueError(f"source {str(path)!r} must be valid JSON{where}: {err}; truncated?") from None
    if path.suffix == ".jsonl":
        return parsed
    data = parsed[0]
    if not isinstance(data, list):
        raise ValueError(f"source {str(path)!r} must hold a JSON list of records, got {type(data).__name__}")
    return data


def _read_dataset(dataset: Any, split: str, source: str) -> Any:
    """Pick ``split`` from a DatasetDict; return a plain Dataset as is."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split must be one of {sorted(dataset)} for source {source!r}, got {split!r}")
        return dataset[split]
    return dataset


def _read_records(source: str, split: str, config: str | None, kind: str) -> Any:
    """Read a file, save_to_disk directory or Hub dataset: a list of records or a Dataset."""
    path = Path(source)
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a foreign folder
            raise ValueError(
                f"source directory {source!r} must be written by save_to_disk: {err}; " + _accepted(kind)
            ) from err
        return _read_dataset(loaded, split, source)
    if path.is_file():
        if path.suffix in (".json", ".jsonl"):
            return _read_json_records(path)
        if path.suffix == ".txt" and kind == "text":
            docs = re.split(r"\n\s*\n", _read_utf8(path))
            return [d for d in docs if d.strip()]
        raise ValueError(
            f"source file {source!r} has an unsupported extension {path.suffix!r}; " + _accepted(kind)
        )
    if path.suffix in (".txt", ".json", ".jsonl"):
        raise ValueError(f"source file {source!r} does not exist; " + _accepted(kind))

    import datasets

    try:
        loaded = datasets.load_dataset(source, config, split=split)
    except Exception as err:  # offline, unknown id, bad config, missing split, ...
        raise ValueError(
            f"source {source!r} is not a local file or directory and could not be loaded "
            f"as a Hugging Face dataset (config={config!r}, split={split!r}): "
            f"{type(err).__name__}: {err}; " + _accepted(kind)
        ) from err
    return _read_dataset(loaded, split, source)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")


def load_texts(
    source: str | None = None,
    *,
    text_field: str = "text",
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Load plain-text documents from an embedded corpus, a file or a dataset.

    Args:
        source: See the module docstring; None gives ``embedded:wiki-calibration``.
        text_field: Field holding the text in JSON records and datasets.
        split: Split to read from a DatasetDict or a Hub dataset.
        config: Hub dataset config name (e.g. ``"wikitext-2-raw-v1"``).
        limit: Keep the first ``limit`` documents; None keeps all.

    Returns:
        Non-empty, stripped documents in source order.

    Raises:
        ValueError: If the source cannot be read, lacks ``text_field``, or yields no
            text; the message names the source and the accepted forms.
    """
    _check_limit(limit)
    if source is None:
        source = EMBEDDED_PREFIX + DEFAULT_CALIBRATION
    if source.startswith(EMBEDDED_PREFIX):
        name = source.removeprefix(EMBEDDED_PREFIX)
        if name not in EMBEDDED_TEXTS:
            raise ValueError(
                f"source {source!r} names no embedded corpus; known are "
                + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_TEXTS)
            )
        records: Any = EMBEDDED_TEXTS[name]()
    else:
        records = _read_records(source, split, config, "text")

    if isinstance(records, list):
        texts = []
        for i, rec in enumerate(records):
            if isinstance(rec, dict):
                if text_field not in rec:
                    raise ValueError(
                        f"record {i} of {source!r} must have field text_field={text_field!r}, "
                        f"found fields {sorted(rec)}"
                    )
                rec = rec[text_field]
            if not isinstance(rec, str):
                raise ValueError(
                    f"record {i} of {source!r} must be a string or an object with a string "
                    f"{text_field!r} field, got {type(rec).__name__}"
                )
            texts.append(rec)
    else:
        if text_field not in records.column_names:
            raise ValueError(
                f"dataset {source!r} must have column text_field={text_field!r}, "
                f"found columns {records.column_names}"
            )
        texts = [t for t in records[text_field] if isinstance(t, str)]  # drops None

    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"source {source!r} gave no non-empty text; " + _accepted("text"))
    return texts[:limit]


def load_instructions(
    source: str | None = None,
    *,
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[InstructionExample]:
    """Load Alpaca-style instruction examples.

    Args:
        source: None for the embedded QA mix (balanced over six sources, shuffled by
            ``seed``; see ``qa_mix.py``), else a ``.json``/``.jsonl`` file, a
            save_to_disk directory or a Hub dataset id with columns ``instruction``,
            ``output`` and optionally ``input``.
        split: Split to read from a DatasetDict or a Hub dataset.
        config: Hub dataset config name.
        limit: Number of examples; user data keeps its order and is cut to the first
            ``limit``, the embedded mix is sampled to ``limit`` examples.
        seed: Seed of the embedded mix (user data is not reordered).

    Returns:
        The examples.

    Raises:
        ValueError: If the source cannot be read, a record lacks a required column
            (the message lists the columns found and required), or it is empty.
    """
    _check_limit(limit)
    if source is None:
        from qradaptor.data.qa_mix import qa_instruction_mix

        return qa_instruction_mix(limit=limit, seed=seed)
    if source.startswith(EMBEDDED_PREFIX):
        raise ValueError(
            f"source {source!r}: embedded corpora are text only; use source=None for the embedded QA mix"
        )
    records = _read_records(source, split, config, "instructions")
    if not isinstance(records, list):
        missing = [c for c in INSTRUCTION_COLUMNS if c not in records.column_names]
        if missing:
            raise ValueError(
                f"dataset {source!r} is missing column(s) {missing}: required are "
                f"{list(INSTRUCTION_COLUMNS)} (+ optional input), "
                f"found {records.column_names}"
            )
        stop = len(records) if limit is None else min(limit, len(records))
        records = records.select(range(stop)).to_list()

    examples = []
    for i, rec in enumerate(records[:limit]):
        if not isinstance(rec, dict):
            raise ValueError(
                f"record {i} of {source!r} must be an object with columns "
                f"{list(INSTRUCTION_COLUMNS)} (+ optional input), got {type(rec).__name__}"
            )
        missing = [c for c in INSTRUCTION_COLUMNS if c not in rec]
        if missing:
            raise ValueError(
                f"record {i} of {source!r} is missing column(s) {missing}: required are "
                f"{list(INSTRUCTION_COLUMNS)} (+ optional input), found {sorted(rec)}"
            )
        examples.append(
            InstructionExample(
                instruction=str(rec["instruction"]),
                input=str(rec.get("input") or ""),
                output=str(rec["output"]),
                source=source,
            )
        )
    if not examples:
        raise ValueError(f"source {source!r} gave no examples; " + _accepted("instructions"))
    return examples
