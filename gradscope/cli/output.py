"""Writing a report where the user asked: one place, so that a bad output path is bad input, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from gradscope.errors import OutputError


def check_writable(path: str | Path) -> None:
    """Raise OutputError when ``path`` is a directory or its directory does not exist."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory", hint="give a file name for the report")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: its directory {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {path}: its directory {path.parent} is not writable")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), or raise OutputError naming the path and what to do."""
    path = Path(path)
    check_writable(path)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OutputError(
            f"cannot write {path}: {err.strerror or err}", hint="check the path and its permissions"
        ) from None
