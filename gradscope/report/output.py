"""Writing a report where the user asked: one place, so that a bad output path is bad input, never a traceback."""

from __future__ import annotations

from pathlib import Path

from gradscope.errors import OutputError


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), or raise OutputError naming the path and what to do."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a directory", path=path, hint="give a file name for the report")
    if not path.parent.is_dir():
        raise OutputError(f"the directory {path.parent} does not exist", path=path, hint="create it first")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot be written ({err.strerror or err})", path=path) from None
