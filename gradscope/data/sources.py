"""What kind of data a path holds, decided in one place for every reader (check, inspect, roles, scan)."""

from __future__ import annotations

from pathlib import Path

from gradscope.errors import DataError

SUFFIXES = {".safetensors": "safetensors", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
"""File suffixes gradscope reads, and the format each names; a directory is a saved ``datasets`` dataset."""

RAW_COLUMNS = ("messages", "prompt", "completion", "text")
"""The fields of a raw row (text to tokenize); a row with ``input_ids`` is tokenized instead."""

TOKENIZED_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "completion_mask", "assistant_masks")
"""The per-token fields a tokenized row may hold."""

_KNOWN = ".safetensors batch, .jsonl, .json, .parquet, .arrow or a saved datasets directory"


def data_format(path: str | Path) -> str:
    """``safetensors``, ``jsonl``, ``json``, ``parquet``, ``arrow`` or ``datasets`` (a directory).

    Raises:
        DataError: no such path, or a suffix gradscope does not read.
    """
    path = Path(path)
    if path.is_dir():
        if not is_utf8(path):
            raise DataError(
                "the path is not valid UTF-8, and the datasets reader opens UTF-8 paths only",
                path=path,
                hint="rename the directory",
            )
        return "datasets"
    if not path.is_file():
        what = "not a regular file (a FIFO, device or socket)" if path.exists() else "no such data file or directory"
        raise DataError(what, path=path, hint=f"give a {_KNOWN}")
    try:
        kind = SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise DataError(f"unknown data format {path.suffix!r}", path=path, hint=f"use a {_KNOWN}") from None
    if kind not in ("jsonl", "json") and not is_utf8(path):
        raise DataError(
            f"the path is not valid UTF-8, and the {kind} reader opens UTF-8 paths only",
            path=path,
            hint="rename the file (or its directory)",
        )
    return kind


def is_utf8(path: str | Path) -> bool:
    """Whether a path's name is valid UTF-8 (a non-UTF-8 name reaches Python as lone surrogates, which the
    safetensors, tokenizers and Arrow readers cannot take)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
