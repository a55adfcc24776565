"""Matplotlib without a display, and figures written atomically: shared by every plot we make.

matplotlib is an optional extra (``qradaptor[plot]``), so it is imported only when a plot is
drawn. Figures go through a temp file in the target folder and ``os.replace``, so a crash
never leaves a half-written image under the final name.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def can_plot() -> bool:
    """Whether matplotlib is installed (found without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Lays out ``fig``, writes it to ``path`` atomically and closes it.

    The format follows the suffix (``.png`` when there is none, e.g. ``.pdf``).
    """
    from qradaptor.atomic import atomic_file

    suffix = os.path.splitext(os.fspath(path))[1] or ".png"
    try:
        fig.tight_layout()
        with atomic_file(path, suffix=suffix) as tmp:
            fig.savefig(tmp, format=suffix.lstrip("."), dpi=120)
    finally:
        pyplot().close(fig)
