"""The embedded text corpora by name (``embedded:NAME``) and which role each plays.

Each corpus is cut into the roles of ``roles.py``. A search calibrates on one role of a
corpus and selects on that corpus's selection role (``SELECTION_OF``); ``qra eval`` reports
perplexity on test roles only (``TEST_CORPORA``), so no default lets a plan be chosen on the
text it is scored on.
"""

from __future__ import annotations

from collections.abc import Callable

from qradaptor.data.embedded import boolq_passages, lambada_passages, wiki_passages
from qradaptor.data.qa_mix import qa_mix_texts

EMBEDDED_TEXTS: dict[str, Callable[[], list[str]]] = {
    "wiki-calibration": lambda: wiki_passages("calibration"),
    "wiki-selection": lambda: wiki_passages("selection"),
    "wiki-test": lambda: wiki_passages("test"),
    "boolq-calibration": lambda: boolq_passages("calibration"),
    "boolq-selection": lambda: boolq_passages("selection"),
    "boolq-heldout": lambda: boolq_passages("test"),
    "boolq-all": lambda: boolq_passages("all"),
    "lambada": lambada_passages,
    "qa-mix": lambda: qa_mix_texts("calibration"),
    "qa-mix-selection": lambda: qa_mix_texts("selection"),
    "qa-mix-heldout": lambda: qa_mix_texts("test"),
}
"""Text corpora reachable as ``embedded:<name>`` in ``load_texts``."""

DEFAULT_CALIBRATION = "wiki-calibration"
"""The corpus profiling and the search's proxies read when given no ``--data``."""

SELECTION_OF = {
    "wiki-calibration": "wiki-selection",
    "boolq-calibration": "boolq-selection",
    "qa-mix": "qa-mix-selection",
}
"""The selection corpus a search scores plans on when it calibrates on the key."""

TEST_CORPORA = {
    "boolq-heldout": "ppl_wiki",
    "lambada": "ppl_lambada",
    "boolq-all": "ppl_wiki (its test role is inside)",
}
"""Corpora that hold what ``qra eval`` reports; calibrating or selecting on them is warned of."""
