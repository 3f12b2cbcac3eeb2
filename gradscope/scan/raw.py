"""Raw rows for ``scan --tokenizer``: tokenized and given roles exactly as ``check`` does."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from gradscope.constants import IGNORE_INDEX
from gradscope.data.batch import COMPLETION
from gradscope.data.chunks import Chunk
from gradscope.data.pipelines import DataOptions
from gradscope.data.roles import RoleSpec, derive_rows
from gradscope.data.rows import RoleRow, truncate
from gradscope.data.stream import Source, raw_row_batches
from gradscope.errors import DataError
from gradscope.tokenizer import Tokenizer


@dataclass
class RawSettings:
    """How raw rows become tokens and roles, and what kinds of rows were seen."""

    tokenizer: Tokenizer
    spec: RoleSpec
    options: DataOptions
    kinds: set[str] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        """The ``source.raw`` entry of the JSON report."""
        o = self.options
        return {
            "kinds": sorted(self.kinds),
            "train_on": o.train_on,
            "response_template": o.response_template,
            "instruction_template": o.instruction_template,
            "max_length": o.max_length,
            "truncation_mode": o.truncation_mode or "keep_start",
        }


def raw_chunks(source: Source, settings: RawSettings) -> Iterator[Chunk]:
    """The source's raw rows, chunk by chunk, tokenized with their roles and reference labels.

    Raises:
        DataError: the first row ``check`` would reject (no known fields, a template that fails or breaks the
            prefix property, a template string not found as tokens), naming the file and row; or a row with no
            tokens.
    """
    first = 0
    mode = settings.options.truncation_mode or "keep_start"
    for rows in raw_row_batches(source):
        with _gc_paused():
            derived = derive_rows(rows, settings.tokenizer, settings.spec, first)
            settings.kinds.update(r.kind for r in derived)
            chunk = role_chunk([truncate(r, settings.options.max_length, mode) for r in derived], first, source)
        yield chunk
        first += len(rows)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a chunk is derived: the chunk's millions of small objects (token ids, offset
    pairs) hold no cycles, yet each collection walks them all (a third of the raw scan's time when left on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def role_chunk(rows: list[RoleRow], first: int, source: Source) -> Chunk:
    """Derived rows as one Chunk: ids, reference labels, the completion mask and the tokens truncation cut."""
    lengths = np.fromiter((len(r.input_ids) for r in rows), dtype=np.int64, count=len(rows))
    if len(lengths) and not lengths.all():
        raise DataError(
            "the row tokenizes to no tokens",
            path=source.path,
            row=first + int(np.flatnonzero(lengths == 0)[0]),
            hint="give the row some text",
        )
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(r.input_ids for r in rows), dtype=np.int64, count=total)
    roles = np.fromiter(chain.from_iterable(r.roles for r in rows), dtype=np.int8, count=total)
    completion = roles == COMPLETION
    labels = np.where(completion, ids, IGNORE_INDEX)  # RoleRow.labels: what check's reference pipeline trains
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    cut = np.fromiter((r.cut for r in rows), dtype=np.int64, count=len(rows))
    return Chunk(first, starts, ids, labels, None, completion.astype(np.int8), cut)
