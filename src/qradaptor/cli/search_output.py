"""A search's run folder is written by the library's ``recipes/search_output.py`` (the recipe
runs without the CLI); re-exported here for the callers that import it from the CLI's side."""

from __future__ import annotations

from qradaptor.recipes.search_output import print_outcome, write_config, write_run  # noqa: F401
