"""Secrets out of what we print and save: passwords in URLs become ``***``.

A storage URL such as ``postgresql+psycopg2://user:secret@host/db`` may reach a command
line that is saved (RUN/config.json, an experiment's cell.json and logs) or printed. Every
such text goes through ``redact`` first; the URL itself is handed to workers through the
environment (``STORAGE_ENV``), never on their command line, where ``ps`` shows it to every
local user.
"""

from __future__ import annotations

import re

STORAGE_ENV = "QRADAPTOR_STORAGE"
"""Environment variable that hands ``qra worker`` its storage URL without putting it in argv."""
HIDDEN = "***"
_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@]+)(?P<at>@)")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL replaced by ``***``.

    Example:
        >>> redact("qra search --storage postgresql://me:hunter2@db:5432/q")
        'qra search --storage postgresql://me:***@db:5432/q'
    """
    return _PASSWORD.sub(lambda m: m.group("head") + HIDDEN + m.group("at"), text)
