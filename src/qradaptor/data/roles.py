"""The three roles a text can play, assigned by a stable hash of the text itself.

Every corpus qradaptor reads is cut three ways, so that no plan is chosen on the text it is
scored on:

============ ======= ==============================================================
role         share   what reads it
============ ======= ==============================================================
calibration  3/5     sensitivity profiling and the search's proxy fine-tunes
selection    1/5     the search's scores (rung 0, proxies, Bayes): which plan wins
test         1/5     what ``qra eval`` reports (``ppl_wiki`` is BoolQ's test role)
============ ======= ==============================================================

A text's role is ``stable_hash(text) % 5``: 0 is test, 1 is selection, the rest calibration.
It depends on the text only, never on a seed, the order of rows or the Python version, so a
passage keeps its role across runs, corpora sizes and machines. Bucket 0 is the old
"held-out" fifth, so the published test text (``embedded:boolq-heldout``) is unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

ROLES = ("calibration", "selection", "test")
"""The roles, in the order the search meets them."""

_BUCKETS = 5
"""A text's bucket is its hash modulo this; see the module table."""

_ROLE_OF_BUCKET = {0: "test", 1: "selection"}
"""Buckets of the two held-out roles; every other bucket calibrates."""


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def role_of(text: str) -> str:
    """The role of one text: ``"calibration"``, ``"selection"`` or ``"test"``."""
    return _ROLE_OF_BUCKET.get(stable_hash(text) % _BUCKETS, "calibration")


def check_role(role: str) -> None:
    """Raises ValueError naming the accepted roles unless ``role`` is one of ``ROLES``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")


def texts_in_role(texts: Sequence[str], role: str) -> list[str]:
    """The texts whose role is ``role``, in their given order.

    Raises:
        ValueError: If ``role`` is not one of ``ROLES``.
    """
    check_role(role)
    return [t for t in texts if role_of(t) == role]


def hold_out_selection(texts: Sequence[str], *, source: str) -> tuple[list[str], list[str]]:
    """Cuts a user's corpus into (calibration, selection) for a search given no selection text.

    The selection role (about 1/5) scores the plans; everything else, the test role included,
    calibrates: the user's own test text is theirs to choose, and none of it is scored here.

    Args:
        texts: The corpus's documents.
        source: The corpus's name, for the error message.

    Returns:
        (calibration texts, selection texts), each in the given order.

    Raises:
        ValueError: If either part would be empty (too few documents to hold any out); the
            message says how many documents there are and how to pass selection text.
    """
    selected = [role_of(t) == "selection" for t in texts]
    selection = [t for t, s in zip(texts, selected, strict=True) if s]
    calibration = [t for t, s in zip(texts, selected, strict=True) if not s]
    if not selection or not calibration:
        raise ValueError(
            f"--data {source!r} has {len(texts)} document(s), too few to hold about 1/5 out for "
            "scoring plans (documents are told apart by blank lines in a .txt, by records in "
            "JSON); pass the text to score plans on with --eval-data"
        )
    return calibration, selection
