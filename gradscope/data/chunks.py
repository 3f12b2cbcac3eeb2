"""Chunks: rows of token ids laid out as flat NumPy arrays with offsets, read from Arrow record batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.constants import IGNORE_INDEX, ROLE_KEYS
from gradscope.errors import DataError

DOCUMENT_COLUMNS = ("position_ids", "seq_idx")
"""Per-token columns that declare packed documents: a restart of position_ids, a change of seq_idx."""
TOKEN_COLUMNS = ("input_ids", "labels", "attention_mask", *ROLE_KEYS, *DOCUMENT_COLUMNS)
CHUNK_TOKENS = 1 << 21
"""Tokens per chunk, about: bounds memory, and keeps per-chunk overhead negligible."""


@dataclass
class Chunk:
    """Consecutive rows of pre-tokenized data, their tokens laid end to end in flat NumPy arrays (N,).

    Attributes:
        first_row: The index in the data of the chunk's first row.
        starts: (R,) where each row begins in the flat arrays; rows are never empty.
        input_ids: Token ids.
        labels: Labels as given, or the default (input_ids, -100 where attention_mask is 0).
        attention: attention_mask (0 = padding), or None when the data has none.
        completion: The role mask (completion_mask / assistant_masks, 1 = meant to be trained), or None. Roles
            gradscope read from the tokens (a chat template's markers) mark tokens of no role -1.
        known: (R,) which rows' roles are known, when some are not (roles read from the tokens); None: all rows',
            if ``completion`` is given.
        role_reasons: Why the rows whose roles are not known have none (each reason once).
        prefill: (N,) the chat template's generation-prompt prefill at the start of an assistant turn
            (``SampleView.prefill``), when the template writes one; else None.
        cut: (R,) completion tokens that truncation removed from each row, known when the scan tokenized raw rows
            itself; else None.
        documents: Where the data declares that a packed document starts (bool, never at a row's first token):
            ``position_ids`` not continuing, ``seq_idx`` changing, a ``cu_seq_lens`` boundary; None when nothing
            is declared.
    """

    first_row: int
    starts: np.ndarray
    input_ids: np.ndarray
    labels: np.ndarray
    attention: np.ndarray | None = None
    completion: np.ndarray | None = None
    cut: np.ndarray | None = None
    known: np.ndarray | None = None
    role_reasons: tuple[str, ...] = ()
    prefill: np.ndarray | None = None
    documents: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.starts)

    @property
    def has_roles(self) -> bool:
        return self.completion is not None

    def known_rows(self) -> np.ndarray:
        """(R,) True where the row's roles are known."""
        if self.completion is None:
            return np.zeros(self.rows, dtype=bool)
        return np.ones(self.rows, dtype=bool) if self.known is None else self.known

    def known_tokens(self) -> np.ndarray:
        """(N,) True at the tokens of rows whose roles are known."""
        return np.repeat(self.known_rows(), np.diff(self.starts, append=len(self.input_ids)))

    def row(self, r: int) -> dict[str, np.ndarray]:
        """Row r of the chunk (0-based within the chunk) as its own arrays."""
        end = self.starts[r + 1] if r + 1 < self.rows else len(self.input_ids)
        span = slice(int(self.starts[r]), int(end))
        out = {"input_ids": self.input_ids[span], "labels": self.labels[span]}
        if self.attention is not None:
            out["attention_mask"] = self.attention[span]
        if self.completion is not None and (self.known is None or self.known[r]):
            out["completion_mask"] = self.completion[span]
        if self.cut is not None:
            out["completion_cut"] = self.cut[r : r + 1]
        if self.documents is not None:
            out["document_starts"] = self.documents[span]
        return out


def row_groups(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for row in rows:
        group.append(row)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def rechunk(batches: Iterator) -> Iterator:
    """Record batches of about CHUNK_TOKENS tokens: large ones sliced (no copy), small ones (datasets writes 1,000
    rows each) joined, so that memory is bounded and per-chunk overhead stays negligible."""
    import pyarrow as pa

    group: list[Any] = []
    tokens = 0
    for batch in batches:
        for piece in _slices(batch):
            if group and piece.schema != group[0].schema:
                yield _join(pa, group)
                group, tokens = [], 0
            group.append(piece)
            tokens += _tokens(piece)
            if tokens >= CHUNK_TOKENS:
                yield _join(pa, group)
                group, tokens = [], 0
    if group:
        yield _join(pa, group)


def _tokens(batch) -> int:
    column = batch.column("input_ids")
    if not hasattr(column, "offsets"):  # not a list column: to_chunk names the row and the type
        return 0
    offsets = column.offsets
    return int(offsets[-1].as_py() - offsets[0].as_py()) if len(offsets) else 0


def _slices(batch) -> Iterator:
    """The batch cut between rows into pieces of at most about CHUNK_TOKENS tokens (at least one row each)."""
    if _tokens(batch) <= CHUNK_TOKENS:
        yield batch
        return
    offsets = _offsets(batch.column("input_ids"))
    offsets = offsets - offsets[0]
    start = 0
    while start < batch.num_rows:
        stop = int(np.searchsorted(offsets, offsets[start] + CHUNK_TOKENS, side="right")) - 1
        stop = min(max(stop, start + 1), batch.num_rows)
        yield batch.slice(start, stop - start)
        start = stop


def _join(pa, group: list):
    return group[0] if len(group) == 1 else pa.Table.from_batches(group).combine_chunks().to_batches()[0]


def to_chunk(batch, first_row: int, path: Path, vocab_size: int | None = None) -> Chunk:
    """One Arrow record batch of list columns as a Chunk of flat arrays, its values checked (ids below
    ``vocab_size`` when given)."""
    ids, offsets = _flat(batch, "input_ids", first_row, path)
    lengths = np.diff(offsets)
    if len(lengths) and not lengths.all():
        raise DataError("'input_ids' is empty", path=path, row=first_row + int(np.flatnonzero(lengths == 0)[0]))
    columns = {}
    for name in TOKEN_COLUMNS[1:]:
        if name in batch.schema.names:
            columns[name], own = _flat(batch, name, first_row, path)
            _same_lengths(name, np.diff(own), lengths, first_row, path)
    starts = offsets[:-1]
    _check_ids(ids, starts, first_row, path)
    if vocab_size is not None:
        _check_vocab(ids, starts, vocab_size, first_row, path)
    for name, values in columns.items():
        _check_column(name, values, starts, first_row, path)
    attention = columns.get("attention_mask")
    role = next((columns[k] for k in ROLE_KEYS if k in columns), None)
    labels = columns.get("labels")
    if labels is None:  # what check does: input_ids, -100 where attention_mask is 0
        labels = ids if attention is None else np.where(attention == 0, IGNORE_INDEX, ids)
    return Chunk(first_row, starts, ids, labels, attention, role, documents=declared_documents(columns, starts))


def declared_documents(columns: dict[str, np.ndarray], starts: np.ndarray) -> np.ndarray | None:
    """(N,) bool, where the rows' ``position_ids`` do not continue (``previous + 1``, transformers' rule, as
    ``gradscope.data.batch.document_starts`` reads a batch) or ``seq_idx`` changes; None when neither is given."""
    found = None
    for name, restarts in (("position_ids", lambda v: v[1:] != v[:-1] + 1), ("seq_idx", lambda v: v[1:] != v[:-1])):
        values = columns.get(name)
        if values is None:
            continue
        found = np.zeros(len(values), dtype=bool) if found is None else found
        found[1:] |= restarts(values.astype(np.int64, copy=False))
    if found is not None:
        found[starts] = False  # a row's first token starts no document inside it
    return found


def _offsets(column) -> np.ndarray:
    """A list column's offsets as int64."""
    return _integers(column.offsets).astype(np.int64, copy=False)


def _integers(array) -> np.ndarray:
    """An Arrow array as NumPy, without copying: integers without nulls straight from their buffer (pyarrow's own
    ``to_numpy`` imports pandas on its first call, a third of a second); anything else through ``to_numpy``."""
    import pyarrow as pa

    if not pa.types.is_integer(array.type) or array.null_count or not len(array):
        return array.to_numpy(zero_copy_only=False)
    data = np.frombuffer(array.buffers()[1], dtype=np.dtype(str(array.type)))
    return data[array.offset : array.offset + len(array)]


def _flat(batch, name: str, first_row: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A list column's values (N,) and its offsets (R + 1,) from 0; nulls and non-integers are errors."""
    column = batch.column(name)
    if column.null_count:
        row = first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"'{name}' is null", path=path, row=row)
    if not hasattr(column, "offsets"):
        raise DataError(f"'{name}' must hold lists of integers, not {column.type}", path=path, row=first_row)
    offsets = _offsets(column)
    inner = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if inner.null_count:
        at = int(np.flatnonzero(inner.is_null().to_numpy(zero_copy_only=False))[0])
        row = first_row + int(np.searchsorted(offsets - offsets[0], at, side="right")) - 1
        raise DataError(f"'{name}' holds a null", path=path, row=row, hint="every entry must be an integer")
    values = _integers(inner)
    if values.dtype.kind not in "iu" and not (values.dtype.kind == "b" and name != "input_ids" and name != "labels"):
        raise DataError(f"'{name}' must hold lists of integers, not {column.type}", path=path, row=first_row)
    if values.dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:  # would wrap negative
        at = int(np.flatnonzero(values > np.iinfo(np.int64).max)[0])
        row = first_row + int(np.searchsorted(offsets - offsets[0], at, side="right")) - 1
        raise DataError(
            f"'{name}' holds {int(values[at])}, beyond int64",
            path=path,
            row=row,
            hint="token ids and labels are int64 in training",
        )
    return values, offsets - offsets[0]


def _same_lengths(name: str, lengths: np.ndarray, expected: np.ndarray, first_row: int, path: Path) -> None:
    if not np.array_equal(lengths, expected):
        row = int(np.flatnonzero(lengths != expected)[0])
        raise DataError(
            f"'{name}' has {int(lengths[row])} entries but 'input_ids' has {int(expected[row])}",
            path=path,
            row=first_row + row,
            hint=f"give '{name}' one entry per token",
        )


def _check_column(name: str, values: np.ndarray, starts: np.ndarray, first_row: int, path: Path) -> None:
    """labels: -100 or a token id; masks: 0 or 1; position_ids and seq_idx: not negative."""
    if name in DOCUMENT_COLUMNS:
        bad = values < 0
    else:
        bad = (values < 0) & (values != IGNORE_INDEX) if name == "labels" else (values != 0) & (values != 1)
    if len(values) and bad.any():
        at = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(starts, at, side="right")) - 1
        allowed = {
            "labels": f"{IGNORE_INDEX} or a token id",
            "position_ids": "no negative value",
            "seq_idx": "no negative value",
        }.get(name, "only 0 and 1")
        raise DataError(
            f"'{name}' holds {values[at].item()!r}; it must hold {allowed}",
            path=path,
            row=first_row + row,
            position=at - int(starts[row]),
        )


def _check_vocab(ids: np.ndarray, starts: np.ndarray, vocab_size: int, first_row: int, path: Path) -> None:
    if len(ids) and ids.max() >= vocab_size:
        at = int(np.flatnonzero(ids >= vocab_size)[0])
        row = int(np.searchsorted(starts, at, side="right")) - 1
        raise DataError(
            f"'input_ids' holds token id {int(ids[at])}, outside the tokenizer's vocabulary [0, {vocab_size})",
            path=path,
            row=first_row + row,
            position=at - int(starts[row]),
            hint="tokenize with this tokenizer, or give the tokenizer the data was made with",
        )


def _check_ids(ids: np.ndarray, starts: np.ndarray, first_row: int, path: Path) -> None:
    if len(ids) and ids.min() < 0:
        at = int(np.flatnonzero(ids < 0)[0])
        row = int(np.searchsorted(starts, at, side="right")) - 1
        raise DataError(
            f"'input_ids' holds a negative token id {int(ids[at])}",
            path=path,
            row=first_row + row,
            position=at - int(starts[row]),
        )


def safetensors_chunk(path: Path, vocab_size: int | None = None) -> Chunk:
    """A (B, T) batch file: each row is T tokens, padding marked by its attention_mask; validated as check
    validates a batch (bf16 ids, masks of 0.5, labels of -5 or of the wrong length are errors, not verdicts)."""
    from gradscope.data.batch import document_starts, validate
    from gradscope.data.load import read_safetensors

    tensors = read_safetensors(path)
    validate(tensors, vocab_size, str(path))
    b, t = tensors["input_ids"].shape
    flat = {k: v.reshape(-1).long().numpy() for k, v in tensors.items() if k in TOKEN_COLUMNS and v.dim() == 2}
    attention = flat.get("attention_mask")
    ids = flat["input_ids"]
    labels = flat.get("labels")
    if labels is None:
        labels = ids if attention is None else np.where(attention == 0, IGNORE_INDEX, ids)
    role = next((flat[k] for k in ROLE_KEYS if k in flat), None)
    documents = document_starts(tensors).reshape(-1).numpy()  # every declaration check reads, cu_seq_lens included
    return Chunk(0, np.arange(b, dtype=np.int64) * t, ids, labels, attention, role, documents=documents)
