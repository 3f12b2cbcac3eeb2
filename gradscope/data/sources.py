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
        return "datasets"
    if not path.is_file():
        what = "not a regular file (a FIFO, device or socket)" if path.exists() else "no such data file or directory"
        raise DataError(what, path=path, hint=f"give a {_KNOWN}")
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise DataError(f"unknown data format {path.suffix!r}", path=path, hint=f"use a {_KNOWN}") from None
