"""``qra search``'s option vocabulary lives beside ``SearchOptions`` in the library
(``recipes/search_options.py``); the names are re-exported here for the verbs and tests that
import them from the command line's side."""

from __future__ import annotations

from qradaptor.recipes.search_options import (  # noqa: F401  (re-exported)
    GRANULARITIES,
    PRESETS,
    SEARCH_BITS_TEXT,
    STRATEGIES,
    SearchOptions,
    check_positive,
    jsonable,
    parse_choices,
    servable_bits,
)
