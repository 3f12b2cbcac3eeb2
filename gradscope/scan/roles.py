"""Roles for tokenized rows that carry none, read from their tokens as ``check`` reads them.

Pre-tokenized datasets rarely hold a role mask (TRL, axolotl, LLaMA-Factory and torchtune write ``input_ids`` and
``labels``), so without roles a scan could not see a trained prompt. Given a tokenizer, each row's roles come from
the first source that gives them, as in ``check``: ``response_template`` (and ``instruction_template``) as token
sequences, else the chat template's assistant markers. A row no source reads keeps no roles and is counted under
``roles_unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np

from gradscope.checks.sample import prefill_positions
from gradscope.constants import COMPLETION, PROMPT
from gradscope.data.chunks import Chunk
from gradscope.data.token_roles import RowRoles
from gradscope.scan.stream_roles import ChunkRoles, Stream, StreamReader


def with_token_roles(chunks: Iterable[Chunk], read: ChunkRoles) -> Iterator[Chunk]:
    """Each chunk, its rows given the roles ``read`` finds when the data holds no role mask."""
    for chunk in chunks:
        yield chunk if chunk.completion is not None else token_roles(chunk, read)


def token_roles(chunk: Chunk, read: ChunkRoles) -> Chunk:
    """The chunk with a role mask read from each row's real tokens (1 completion, 0 prompt, -1 neither) and
    ``known`` rows; the reasons of the rows not read go to ``role_reasons``. The whole chunk is read at once
    (``stream_roles``), or row by row where its description needs the per-row reader."""
    if not read.vectorized:
        return _row_by_row(chunk, read.scalar, held_mask(chunk, read.scalar.end_token_ids))
    held = held_mask(chunk, read.stream.ends)
    chunk = stream_token_roles(chunk, read.stream, held)
    unread = np.flatnonzero(~chunk.known_rows())
    if not len(unread):
        return chunk
    r = int(unread[0])
    end = chunk.starts[r + 1] if r + 1 < chunk.rows else len(chunk.input_ids)
    ids = chunk.input_ids[chunk.starts[r] : end][held[chunk.starts[r] : end]]
    return replace(chunk, role_reasons=(read.unread_reason(ids.tolist(), chunk.first_row + r),))


def stream_token_roles(chunk: Chunk, read: StreamReader, real: np.ndarray) -> Chunk:
    """``token_roles`` from the token stream, without the reasons; ``real``: the chunk's ``held_mask``."""
    codes, known = read(Stream.of(chunk.input_ids, chunk.starts, real))
    mask = codes  # the role codes COMPLETION 1, PROMPT 0, UNKNOWN -1 are the completion mask's values
    if len(mask) == len(real):  # no padding
        completion = mask
    else:
        completion = np.zeros(len(real), dtype=np.int8)
        completion[real] = mask
    return replace(chunk, completion=completion, known=known)


def held_mask(chunk: Chunk, end_token_ids: frozenset[int]) -> np.ndarray:
    """(N,) the tokens each row holds: its real ones (a 2D mask's ones), and the end tokens the mask hides between a
    row's first and last real token (pad == eos: the model's EOS, not padding; ``gradscope.data.batch.held_tokens``
    for a chunk's rows at once)."""
    n = len(chunk.input_ids)
    if chunk.attention is None:
        return np.ones(n, dtype=bool)
    real = chunk.attention != 0
    if n == 0 or real.all():
        return real
    hidden = ~real & np.isin(chunk.input_ids, sorted(end_token_ids))
    if not hidden.any():
        return real
    lengths = np.diff(np.append(chunk.starts, n))
    row_of = np.repeat(np.arange(chunk.rows), lengths)
    pos = np.arange(n)
    nonempty = lengths > 0  # reduceat over the rows that have tokens (their starts are distinct)
    first, last = np.full(chunk.rows, n), np.full(chunk.rows, -1)
    first[nonempty] = np.minimum.reduceat(np.where(real, pos, n), chunk.starts[nonempty])
    last[nonempty] = np.maximum.reduceat(np.where(real, pos, -1), chunk.starts[nonempty])
    return real | (hidden & (pos >= first[row_of]) & (pos <= last[row_of]))


def _row_by_row(chunk: Chunk, read: RowRoles, held: np.ndarray) -> Chunk:
    """``token_roles`` with the per-row reader, one row after another."""
    n = len(chunk.input_ids)
    completion = np.zeros(n, dtype=np.int8)
    known = np.zeros(chunk.rows, dtype=bool)
    reasons: dict[str, None] = {}
    ends = np.append(chunk.starts[1:], n).tolist()
    for r, (begin, end) in enumerate(zip(chunk.starts.tolist(), ends, strict=True)):
        positions = begin + np.flatnonzero(held[begin:end])
        _, roles, reason = read(chunk.input_ids[positions].tolist(), chunk.first_row + r)
        if roles is None:
            reasons[reason or "no role source"] = None
            continue
        known[r] = True
        codes = np.asarray(roles)
        completion[positions] = np.where(codes == COMPLETION, 1, np.where(codes == PROMPT, 0, -1))
    return replace(chunk, completion=completion, known=known, role_reasons=tuple(reasons))


def with_prefills(chunks: Iterable[Chunk], prefills: tuple[tuple[int, ...], ...]) -> Iterator[Chunk]:
    """Each chunk with its prefill positions, when the template writes a generation-prompt prefill."""
    for chunk in chunks:
        yield (
            chunk if not prefills or chunk.completion is None else replace(chunk, prefill=prefill_mask(chunk, prefills))
        )


def prefill_mask(chunk: Chunk, prefills: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """(N,) the positions ``SampleView.prefill`` names, for every row of the chunk at once (rows with known roles,
    padding no completion)."""
    assert chunk.completion is not None, "with_prefills passes only chunks with a completion"
    completion = (chunk.completion > 0) & chunk.known_tokens()
    if chunk.attention is not None:
        completion &= chunk.attention != 0
    return prefill_positions(chunk.input_ids, completion, chunk.starts, prefills)
