"""Matplotlib without a display, and figures written atomically: shared by every plot we make.

matplotlib is an optional extra (``qradaptor[plot]``), so it is imported only when a plot is
drawn. Figures go through a temp file in the target folder and ``os.replace``, so a crash
never leaves a half-written image under the final name.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
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
    target, tmp = os.fspath(path), None
    suffix = os.path.splitext(target)[1] or ".png"
    try:
        fig.tight_layout()
        fd, tmp = tempfile.mkstemp(
            dir=os.path.dirname(os.path.abspath(target)),
            prefix=f".{os.path.basename(target)}.",
            suffix=suffix,
        )
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format=suffix.lstrip("."), dpi=120)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a plot is not a secret
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        pyplot().close(fig)
