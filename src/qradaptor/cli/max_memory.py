"""``--max-memory``'s checks live in the library (``recipes/max_memory.py``), where the search
and train recipes reach them; qra profile and qra eval, and the tests, import them from here."""

from __future__ import annotations

from qradaptor.recipes.max_memory import (  # noqa: F401  (re-exported)
    SearchFit,
    check_eval,
    check_profile,
    check_search,
    check_train,
    enforce,
    first_fit,
    parse,
)
