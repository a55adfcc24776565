"""Which texts a search calibrates on and which it selects plans on, and the record of it.

``search_texts`` turns ``qra search``'s ``--data`` and ``--eval-data`` into the two disjoint
text sets of ``roles.py`` and a plain record of which source played which role, so a run
folder says what its plans were chosen on:

- no ``--data``: calibrate on ``embedded:wiki-calibration``, select on
  ``embedded:wiki-selection`` (Wikipedia passages of DROP and CoQA, no reported task's text);
- an embedded calibration corpus (``embedded:qa-mix``, ``embedded:boolq-calibration``) and no
  ``--eval-data``: select on the same corpus's selection role;
- a user's corpus and no ``--eval-data``: its selection role (about 1/5, by a stable hash of
  each document) is held out to score plans, the rest calibrates;
- ``--eval-data`` given: used as it is.
A calibration or selection source that holds ``qra eval``'s test text is warned of.
"""

from __future__ import annotations

from dataclasses import dataclass

from qradaptor.data.corpora import DEFAULT_CALIBRATION, SELECTION_OF, TEST_CORPORA
from qradaptor.data.loading import EMBEDDED_PREFIX, load_texts
from qradaptor.data.roles import hold_out_selection


@dataclass(frozen=True)
class SearchTexts:
    """The texts of a search's two roles and where they came from."""

    calibration: list[str]
    """Documents for profiling and the proxy fine-tunes."""
    selection: list[str]
    """Documents the plans are scored on."""
    roles: dict[str, str]
    """``{"calibration": ..., "selection": ..., "test": ...}``: each role's source, in words."""
    warnings: tuple[str, ...]
    """Lines to show the user: a source that holds reported test text, a held-out share."""


def eval_text_warning(flag: str, source: str) -> str | None:
    """The warning for a ``source`` that holds what ``qra eval`` reports; None for any other."""
    name = source.removeprefix(EMBEDDED_PREFIX)
    if source.startswith(EMBEDDED_PREFIX) and name in TEST_CORPORA:
        return (
            f"{flag} {source} holds the text qra eval reports as {TEST_CORPORA[name]}: plans chosen "
            "or profiled on it are scored on their own selection text"
        )
    return None


def search_texts(data: str | None, eval_data: str | None) -> SearchTexts:
    """Loads a search's calibration and selection texts (see the module docstring).

    Args:
        data: ``--data``: None for the default, ``embedded:NAME``, a file or a dataset id.
        eval_data: ``--eval-data``: None to derive the selection text from ``data``.

    Returns:
        The two text lists and the record of their roles.

    Raises:
        ValueError: If a source can't be read, or a user corpus is too small to hold a part
            out (the message says to pass ``--eval-data``).
    """
    source = data or EMBEDDED_PREFIX + DEFAULT_CALIBRATION
    texts = load_texts(source)
    given = (eval_text_warning("--data", source), eval_text_warning("--eval-data", eval_data or ""))
    warnings = [w for w in given if w]
    name = source.removeprefix(EMBEDDED_PREFIX)
    if eval_data is not None:
        calibration, selection = texts, load_texts(eval_data)
        roles = {"calibration": source, "selection": eval_data}
    elif source.startswith(EMBEDDED_PREFIX) and name in SELECTION_OF:
        selection_source = EMBEDDED_PREFIX + SELECTION_OF[name]
        calibration, selection = texts, load_texts(selection_source)
        roles = {"calibration": source, "selection": selection_source}
    elif source.startswith(EMBEDDED_PREFIX):
        raise ValueError(
            f"--data {source} has no selection part to score plans on; pass --eval-data, or calibrate "
            "on one of " + ", ".join(EMBEDDED_PREFIX + n for n in SELECTION_OF)
        )
    else:
        calibration, selection = hold_out_selection(texts, source=source)
        roles = {
            "calibration": f"{source}: {len(calibration)} of its {len(texts)} documents",
            "selection": f"{source}: the other {len(selection)} (held out by a stable hash of each document)",
        }
        warnings.append(
            f"no --eval-data: {len(selection)} of the {len(texts)} documents of {source} (about 1/5, "
            "chosen by a stable hash) are held out to score plans; the other "
            f"{len(calibration)} profile and proxy-train"
        )
    roles["test"] = "what qra eval reports: " + ", ".join(
        f"{task} on {EMBEDDED_PREFIX}{name}" for name, task in TEST_CORPORA.items() if name != "boolq-all"
    )
    return SearchTexts(calibration, selection, roles, tuple(warnings))
