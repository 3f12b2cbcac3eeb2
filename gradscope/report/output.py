"""Where a report is written: an output path checked before any work is done, and the write itself, each failure
an InputError naming the path (for the CLI's ``--output``)."""

from __future__ import annotations

from pathlib import Path

from gradscope.errors import InputError


def check_output_path(path: str | Path) -> Path:
    """A path a report can be written to: not a directory, in a directory that exists and is writable.

    Raises:
        InputError: naming the path and what to do.
    """
    import os

    path = Path(path)
    if path.is_dir():
        raise InputError("is a directory, not a file to write the report to", path=path,
                         hint="give a file name, e.g. report.json")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"the directory {str(parent)!r} does not exist", path=path, hint="create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the directory {str(parent)!r} is not writable", path=path)
    return path


def write_report(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (checked first); an OSError becomes an InputError naming the path."""
    path = check_output_path(path)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write the report: {err.strerror or err}", path=path) from err
