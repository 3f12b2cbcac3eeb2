"""Roles read from a whole chunk's token stream at once: the per-row reader's rules, on arrays.

``data.token_roles.RowRoles`` reads one row at a time, in Python; it stays the reference. Here the same sources,
in the same order (the response template, then the chat template's learnt markers), are read from a chunk's flat
ids: every occurrence of each marker is found at once (NumPy comparisons on shifted ids), and each completion span
runs from a marker to the first end token before the next marker (``searchsorted`` on the end tokens), painted
with a cumulative sum. Rows are the chunk's real tokens only, as the per-row reader sees them.

A description this module does not know (a ``TemplateMarkers`` field it does not read, a ``roles_from`` source)
is read by the per-row reader instead, for the chunk's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from gradscope.constants import COMPLETION, PROMPT, UNKNOWN
from gradscope.data.templates import TemplateMarkers, chat_markers
from gradscope.data.token_roles import RoleSources, RowRoles

MARKER_FIELDS = frozenset({"responses", "glue", "end_token_ids", "tail", "lead"})
"""The ``TemplateMarkers`` fields read here; markers with another field set are read row by row."""


@dataclass
class Stream:
    """The real tokens of a chunk's rows, end to end.

    Attributes:
        ids: (M,) token ids.
        begin: (R,) where each row begins in ``ids``; ``end`` (R,) where it ends (rows may be empty).
    """

    ids: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    indexed: tuple[frozenset[int], np.ndarray, np.ndarray] | None = None  # tokens, their positions, their ids

    def index(self, tokens: frozenset[int]) -> None:
        """Find every position of these tokens in one pass over the ids, for ``at`` to read from."""
        where = self._positions(tokens)
        self.indexed = (tokens, where, self.ids[where])

    def at(self, tokens: frozenset[int]) -> np.ndarray:
        """The positions of these tokens, in order: read from the index when it holds them, else one pass."""
        if self.indexed is not None and tokens <= self.indexed[0]:
            _, where, ids = self.indexed
            return where[np.isin(ids, sorted(tokens))]
        return self._positions(tokens)

    def _positions(self, tokens: frozenset[int]) -> np.ndarray:
        hit = np.zeros(len(self.ids), dtype=bool)
        for token in sorted(tokens):  # a few tokens: one comparison each beats np.isin
            hit |= self.ids == token
        return np.flatnonzero(hit)

    @classmethod
    def of(cls, ids: np.ndarray, starts: np.ndarray, real: np.ndarray) -> Stream:
        """The stream of ``ids`` (N,) laid out in rows at ``starts`` (R,), keeping the ``real`` (N,) tokens."""
        if real.all():  # no padding: the chunk's own arrays, no copy
            return cls(ids, starts, np.append(starts[1:], len(ids)))
        lengths = np.add.reduceat(real.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
        lengths[np.diff(starts, append=len(ids)) == 0] = 0  # reduceat gives an empty row its next token
        end = np.cumsum(lengths)
        return cls(ids[real], end - lengths, end)

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.begin

    def find(self, pattern: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Start positions of every occurrence of ``pattern`` lying within one row, and that row."""
        k, n = len(pattern), len(self.ids)
        if k == 0 or n < k:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        at = self.at(frozenset(pattern[:1]))
        at = at[at <= n - k]
        for j in range(1, k):
            at = at[self.ids[at + j] == pattern[j]]
        row = np.searchsorted(self.end, at, side="right")  # the row holding position at
        keep = at + k <= self.end[row]
        return at[keep], row[keep]

    def equals_at(self, at: np.ndarray, pattern: list[int]) -> np.ndarray:
        """(len(at),) bool: ``pattern`` lies at each position (the caller keeps it inside the row)."""
        ok = np.ones(len(at), dtype=bool)
        for j, token in enumerate(pattern):
            inside = at + j < len(self.ids)
            ok &= inside
            ok[inside] &= self.ids[at[inside] + j] == token
        return ok

    def first_end(self, at: np.ndarray, ends: frozenset[int]) -> np.ndarray:
        """The first position at or after each of ``at`` whose token is an end token (M where none)."""
        where = self.at(ends)
        return np.append(where, len(self.ids))[np.searchsorted(where, at)]

    def per_row(self, flags: np.ndarray) -> np.ndarray:
        """(R,) whether any of a row's tokens is flagged."""
        if not len(flags):
            return np.zeros(len(self.begin), dtype=bool)
        return np.logical_or.reduceat(flags, self.begin.clip(max=len(flags) - 1)) & (self.lengths > 0)

    def spread(self, per_row: np.ndarray) -> np.ndarray:
        """(M,) each row's value at each of its tokens."""
        return np.repeat(per_row, self.lengths)


def _painted(n: int, begin: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """(n,) bool: the positions inside a span [begin, stop); spans are disjoint and sorted (empty ones hold
    nothing). Written run by run: the gap before each span, then the span."""
    keep = stop > begin
    begin, stop = begin[keep], stop[keep]
    runs = np.empty(2 * len(begin) + 1, np.int64)
    runs[0:-1:2] = begin - np.append(0, stop[:-1])  # the gap before each span
    runs[1::2] = stop - begin
    runs[-1] = n - (stop[-1] if len(stop) else 0)
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs)


def _span_codes(n: int, begin: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """(n,) int8 role codes: COMPLETION (1) inside the spans [begin, stop), PROMPT (0) elsewhere: the painted
    booleans read as int8 (no pass over the tokens)."""
    return _painted(n, begin, stop).view(np.int8)


def _span_stops(
    stream: Stream, begin: np.ndarray, limit: np.ndarray, ends: frozenset[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Each span's stop: through the first end token in [begin, limit), else at limit; and whether one closed it."""
    close = stream.first_end(begin, ends)
    closed = close < limit
    return np.where(closed, close + 1, limit), closed


def response_template_roles(
    stream: Stream, response: list[int], instruction: list[int], ends: frozenset[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``_ResponseTemplate`` on every row: (M,) role codes and (R,) whether the row holds the template."""
    found, row = stream.find(response)
    begin = found + len(response)
    # The next occurrence in the same row (its position, not its end), else the row's end.
    same = np.append(row[1:] == row[:-1], False) if len(row) else np.zeros(0, bool)
    limit = np.where(same, np.append(found[1:], -1), stream.end[row])
    if instruction:
        stops, _ = stream.find(instruction)
        nxt = np.append(stops, len(stream.ids))[np.searchsorted(stops, begin)]  # the first at or after begin
        limit = np.where(nxt < stream.end[row], np.minimum(limit, nxt), limit)  # if in the same row
    stop, _ = _span_stops(stream, begin, np.maximum(limit, begin), ends)  # limit < begin: an empty span
    holds = np.zeros(len(stream.begin), dtype=bool)
    holds[row] = True
    return _span_codes(len(stream.ids), begin, stop), holds


def marker_roles(stream: Stream, markers: TemplateMarkers, train_on: str) -> tuple[np.ndarray, np.ndarray]:
    """``TemplateMarkers.roles`` on every row: (M,) role codes and (R,) whether the row has a completion token."""
    n = len(stream.ids)
    found = [(at + len(r), row) for r in markers.responses for at, row in [stream.find(r)]]
    found = found or [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    begin, first = np.unique(np.concatenate([b for b, _ in found]), return_index=True)  # one span per start
    row = np.concatenate([r for _, r in found])[first]  # (a start at a row's end is that row's, not the next)
    last = np.append(row[1:] != row[:-1], True) if len(row) else np.zeros(0, bool)
    limit = np.where(last, stream.end[row], np.append(begin[1:], 0))
    if train_on == "last-assistant":
        begin, row, limit = begin[last], row[last], limit[last]
    stop, closed = _span_stops(stream, begin, limit, markers.end_token_ids)
    roles = _span_codes(n, begin, stop)
    _overwrite(roles, begin, stop, _unjudged(stream, markers, begin, row, stop, closed))
    _tail(stream, markers.tail, roles)
    return roles, stream.per_row(roles == COMPLETION)


def _unjudged(
    stream: Stream, markers: TemplateMarkers, begin: np.ndarray, row: np.ndarray, stop: np.ndarray, closed: np.ndarray
) -> list[tuple[list[int], np.ndarray, np.ndarray, int]]:
    """The lead before each span and the glue after each closed one, where the ids match: (pattern, positions,
    which spans, write order)."""
    out = []
    lead, glue = list(markers.lead), list(markers.glue)
    if lead:
        at = begin - len(lead)
        ok = begin - stream.begin[row] >= len(lead)
        ok[ok] = stream.equals_at(at[ok], lead)
        out.append((lead, at, ok, 2))
    if glue:
        ok = closed & (stop + len(glue) <= stream.end[row])
        ok[ok] = stream.equals_at(stop[ok], glue)
        out.append((glue, stop, ok, 3))
    return out


def _overwrite(
    roles: np.ndarray,
    begin: np.ndarray,
    stop: np.ndarray,
    unjudged: list[tuple[list[int], np.ndarray, np.ndarray, int]],
) -> None:
    """Where a lead or glue lies, the role of the last write there. The per-row loop writes span after span
    (completion, then lead, then glue); the last write at a position wins: key 3 * span + (1 completion, 2 lead,
    3 glue), the highest key at each position (UNKNOWN unless a completion's)."""
    writes = [
        ((at[ok, None] + np.arange(len(pattern))).ravel(), np.repeat(3 * np.flatnonzero(ok) + write, len(pattern)))
        for pattern, at, ok, write in unjudged
    ]
    if not writes:
        return
    at, key = np.concatenate([w for w, _ in writes]), np.concatenate([k for _, k in writes])
    span = np.searchsorted(begin, at, side="right") - 1  # the completion span that may hold it
    inside = (span >= 0) & (at < stop[span.clip(0)] if len(stop) else False)
    key = np.where(inside, np.maximum(key, 3 * span + 1), key)
    where, which = np.unique(at, return_inverse=True)
    last = np.zeros(len(where), np.int64)
    np.maximum.at(last, which, key)
    roles[where] = np.where(last % 3 == 1, np.int8(COMPLETION), np.int8(UNKNOWN))


def _tail(stream: Stream, tail: list[int], roles: np.ndarray) -> None:
    """The template's closing tokens at a row's end, where no span reached them, are not judged."""
    n = len(tail)
    if not n:
        return
    long = np.flatnonzero(stream.lengths > n)
    at = stream.end[long] - n
    ok = stream.equals_at(at, tail)
    window = at[ok, None] + np.arange(n)  # (rows, n)
    prompt = (roles[window] == PROMPT).all(1)
    roles[window[prompt].ravel()] = UNKNOWN


@dataclass
class StreamReader:
    """What the stream reader reads roles from, in the per-row reader's order: the response template's tokens
    (and the instruction template's), then the chat template's markers. Plain data, token ids only: no tokenizer
    is called while it reads (``scan --num-proc``'s forked workers run it)."""

    response: list[int] | None
    instruction: list[int]
    markers: TemplateMarkers | None
    ends: frozenset[int]
    train_on: str

    @property
    def searched(self) -> frozenset[int]:
        """The tokens the sources search the stream for: each template's first token, and the end tokens."""
        markers = self.markers
        patterns = [self.response or [], self.instruction, *(markers.responses if markers else [])]
        return frozenset(p[0] for p in patterns if p) | self.ends | (markers.end_token_ids if markers else frozenset())

    def __call__(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        """(M,) role codes and (R,) which rows a source read; the first source that reads a row gives its roles, and
        a row none reads is all PROMPT."""
        roles = np.full(len(stream.ids), PROMPT, np.int8)
        read = np.zeros(len(stream.begin), dtype=bool)
        stream.index(self.searched)  # every token a search starts from, found in one pass
        sources: list[Callable[[], tuple[np.ndarray, np.ndarray]]] = []
        if self.response is not None:
            sources.append(lambda: response_template_roles(stream, self.response or [], self.instruction, self.ends))
        if (markers := self.markers) is not None:
            sources.append(lambda: marker_roles(stream, markers, self.train_on))
        for source in sources:
            if read.all():  # a later source reads no row that an earlier one read: not run
                break
            codes, holds = source()
            take = holds & ~read
            if take.all():  # every row read by this source: its codes as they are
                roles = codes
                read = take
                continue
            tokens = stream.spread(take)
            roles[tokens] = codes[tokens]
            read |= take
        return roles, read


class ChunkRoles:
    """Reads the roles of a chunk's rows, as ``RowRoles`` reads each row, from its token stream at once.

    Args:
        tokenizer: Tokenizes the response and instruction templates and carries the chat template.
        end_token_ids: Tokens that close a turn.
        sources: What the user gave to read roles from.
    """

    def __init__(self, tokenizer: Any, end_token_ids: frozenset[int], sources: RoleSources) -> None:
        self.scalar = RowRoles(tokenizer, end_token_ids, sources)
        self.available, self.reason = self.scalar.available, self.scalar.reason
        names = [name for name, _ in self.scalar.readers]
        self.stream = StreamReader(
            _ids(tokenizer, sources.response_template) if "response_template" in names else None,
            _ids(tokenizer, sources.instruction_template) if sources.instruction_template else [],
            chat_markers(tokenizer, end_token_ids, sources.chat_template)[0] if "chat_template" in names else None,
            end_token_ids,
            sources.train_on,
        )
        markers = self.stream.markers
        self.vectorized = "roles_from" not in names and (markers is None or _known(markers))

    @property
    def markers(self) -> TemplateMarkers | None:
        return self.stream.markers

    @property
    def response(self) -> list[int] | None:
        return self.stream.response

    @property
    def instruction(self) -> list[int]:
        return self.stream.instruction

    def __call__(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        return self.stream(stream)

    def unread_reason(self, ids: list[int], row: int) -> str:
        """Why no source reads a row (each source gives every row it cannot read the same reason)."""
        return self.scalar(ids, row)[2] or "no role source"


def _known(markers: TemplateMarkers) -> bool:
    """Every field the markers set is one this module reads."""
    return all(f.name in MARKER_FIELDS or not getattr(markers, f.name) for f in fields(markers))


def _ids(tokenizer: Any, text: str | None) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
